import warnings

import numpy as np
import pytest

from lib import encoding as enc
from lib.data import DataError


def ar_noise(rng, n, t, phi=0.5):
    e = rng.standard_normal((n, t))
    for i in range(1, n):
        e[i] += phi * e[i - 1]
    return e.astype(np.float32)


def test_delays_zero_pad_without_wrapping():
    X = np.arange(1, 7, dtype=float)[:, None]
    D = enc.make_delays(X, [0, 1, 2])
    assert D[:, 0].tolist() == [1, 2, 3, 4, 5, 6]
    assert D[:, 1].tolist() == [0, 1, 2, 3, 4, 5]
    assert D[:, 2].tolist() == [0, 0, 1, 2, 3, 4]  # the end never wraps to the start


def test_delays_do_not_cross_runs():
    X = np.arange(1, 7, dtype=float)[:, None]
    D = enc.make_delays(X, [1, 2], run_lengths=[3, 3])
    assert D[:, 0].tolist() == [0, 1, 2, 0, 4, 5]
    assert D[:, 1].tolist() == [0, 0, 1, 0, 0, 4]
    with pytest.raises(ValueError):
        enc.make_delays(X, [1], run_lengths=[2, 2])


def test_tr_features_sum_and_mean():
    acts = np.array([[1.0], [3.0], [5.0]])
    F = enc.tr_features(acts, np.array([0, 0, 2]), 4, "sum")
    assert F[:, 0].tolist() == [4, 0, 5, 0]
    F = enc.tr_features(acts, np.array([0, 0, 2]), 4, "mean")
    assert F[:, 0].tolist() == [2, 0, 5, 0]


def test_folds_are_contiguous_with_gap():
    folds = enc.contiguous_folds(100, 5, gap=5)
    tests = np.concatenate([te for _, te in folds])
    assert np.array_equal(tests, np.arange(100))          # every TR tested once, in order
    for tr, te in folds:
        assert np.all(np.diff(te) == 1)
        dist = np.abs(tr[:, None] - te[None]).min()
        assert dist > 5                                     # >= gap TRs between train and test
    runs = enc.contiguous_folds(60, 5, 5, run_lengths=[30, 30])
    assert len(runs) == 2 and runs[0][1].tolist() == list(range(30))


def test_inner_split_is_contiguous_and_gapped():
    tr, te = enc.contiguous_folds(200, 5, 5)[0]
    fit, val = enc.inner_split(tr, te, 0.2, 5)
    assert np.all(np.diff(val) == 1)
    assert np.abs(fit[:, None] - val[None]).min() > 5
    assert not set(fit) & set(te) and not set(val) & set(te)


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    n, p, t = 300, 60, 300
    X = rng.standard_normal((n, p)).astype(np.float32)
    W = rng.standard_normal((p, t)) * (rng.random(t) < 0.5)
    Y = (X @ W * 0.08 + rng.standard_normal((n, t))).astype(np.float32)
    return X, Y, np.abs(W).sum(0) > 0


def test_alpha_selection_matches_brute_force(planted):
    from sklearn.linear_model import Ridge

    X, Y, has = planted
    res = enc.fit_score(X, Y)
    for f, (tr, te) in enumerate(enc.contiguous_folds(len(X), 5, 5)):
        mu, sd = X[tr].mean(0), X[tr].std(0)
        Xz = (X - mu) / sd
        Yz = (Y - Y[tr].mean(0)) / Y[tr].std(0)
        fit, val = enc.inner_split(tr, te, 0.2, 5)
        vr = []
        for a in enc.DEFAULT_ALPHAS:
            pr = Ridge(alpha=a, fit_intercept=False).fit(Xz[fit], Yz[fit]).predict(Xz[val])
            vr.append(enc._np_pearson(pr, Yz[val]))
        vr = np.nan_to_num(np.array(vr), nan=-1)
        chosen = np.searchsorted(enc.DEFAULT_ALPHAS, res.alphas[f] * (1 - 1e-9))
        # the engine's alpha is the brute-force best (ties within ALPHA_TIE go to the larger)
        assert (vr.max(0) - vr[chosen, np.arange(Y.shape[1])]).max() <= enc.ALPHA_TIE + 1e-6
        # and the fold score equals a per-target sklearn refit with that alpha
        r = np.array([enc._np_pearson(
            Ridge(alpha=enc.DEFAULT_ALPHAS[c], fit_intercept=False).fit(Xz[tr], Yz[tr, j])
            .predict(Xz[te])[:, None], Yz[te, j:j + 1])[0] for j, c in enumerate(chosen)])
        np.testing.assert_allclose(res.fold_scores[f], r, atol=1e-4)


def test_agrees_with_sklearn_ridgecv_on_blocked_cv(planted):
    """Single alpha grid point: our fold r equals sklearn's RidgeCV (fit_intercept=True on raw
    data, explicit contiguous inner cv is irrelevant with one alpha)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    X, Y, has = planted
    res = enc.fit_score(X, Y[:, :20], alphas=[100.0])
    for f, (tr, te) in enumerate(enc.contiguous_folds(len(X), 5, 5)):
        sc = StandardScaler().fit(X[tr])
        m = RidgeCV(alphas=[100.0], fit_intercept=True).fit(sc.transform(X[tr]),
                                                            Y[tr, :20] / Y[tr, :20].std(0))
        pr = m.predict(sc.transform(X[te]))
        np.testing.assert_allclose(res.fold_scores[f], enc._np_pearson(pr, Y[te, :20]),
                                   atol=1e-4)


def test_numpy_and_torch_backends_agree(planted):
    X, Y, has = planted
    a = enc.fit_score(X, Y, backend="numpy")
    b = enc.fit_score(X, Y, backend="torch", device="cpu")
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_batches_do_not_change_scores(planted):
    X, Y, has = planted
    a = enc.fit_score(X, Y, batch_targets=10_000)
    b = enc.fit_score(X, Y, batch_targets=37)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


def test_planted_signal_scores_and_null_does_not(planted):
    X, Y, has = planted
    res = enc.fit_score(X, Y)
    assert res.scores[has].mean() > 0.15 and abs(res.scores[~has].mean()) < 0.03
    assert np.isfinite(res.concat_r).all()


def test_gap_prevents_leak_on_autocorrelated_null():
    """Smooth features and smooth BOLD, independent: with the gap the mean r is ~0."""
    rng = np.random.default_rng(3)
    n = 400
    F = ar_noise(rng, n, 20, phi=0.9)
    X = enc.make_delays(F, [1, 2, 3, 4, 5])
    Y = ar_noise(rng, n, 500, phi=0.9)
    r = enc.fit_score(X, Y, gap=5).scores
    assert abs(r.mean()) < 0.02


def test_permutation_null_is_calibrated():
    rng = np.random.default_rng(1)
    n = 300
    X = enc.make_delays(ar_noise(rng, n, 30), [1, 2, 3, 4, 5])
    Y = ar_noise(rng, n, 1500)
    res = enc.fit_score(X, Y, n_perm=1000, perm_block=10, backend="torch", device="cpu")
    fpr = np.mean(res.pvalues < 0.05)
    assert 0.03 <= fpr <= 0.07, fpr
    assert enc.fdr_bh(res.pvalues).mean() < 0.01


def test_permutation_finds_planted(planted):
    X, Y, has = planted
    res = enc.fit_score(X, Y[:, :60], n_perm=200)
    has = has[:60]
    sig = enc.fdr_bh(res.pvalues)
    assert sig[has].mean() > 0.8 and sig[~has].mean() < 0.1


def test_constant_and_nan_voxels_are_excluded_and_counted(planted):
    X, Y, has = planted
    Y = Y[:, :10].copy()
    Y[:, 3] = 5.0
    Y[7, 4] = np.nan
    with pytest.warns(UserWarning, match="2 of 10 targets are constant or contain NaN"):
        res = enc.fit_score(X, Y)
    assert res.n_invalid == 2 and not res.valid[3] and not res.valid[4]
    assert np.isnan(res.scores[[3, 4]]).all() and np.isfinite(res.scores[[0, 1, 2, 5]]).all()


def test_bad_inputs(planted):
    X, Y, has = planted
    with pytest.raises(DataError, match=r"features have 300 TRs but BOLD has 299 TRs \(a\.nii vs b\.npz\)"):
        enc.fit_score(X, Y[:-1], source="a.nii vs b.npz")
    with pytest.raises(DataError, match="too few for 5 folds"):
        enc.fit_score(X[:40], Y[:40])
    with pytest.raises(DataError, match="all features are zero"):
        enc.fit_score(np.zeros_like(X), Y)
    with pytest.raises(DataError, match="no targets"):
        enc.fit_score(X, Y[:, :0])


def test_alpha_at_grid_edge_warns():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 20)).astype(np.float32)
    Y = rng.standard_normal((200, 50)).astype(np.float32)  # pure noise: biggest alpha wins
    with pytest.warns(UserWarning, match="at the edge of the grid"):
        enc.fit_score(X, Y, alphas=[0.1, 1.0, 10.0])


def test_noise_ceiling_and_roi_means():
    rng = np.random.default_rng(0)
    shared = rng.standard_normal((200, 30))
    Ys = [shared + rng.standard_normal((200, 30)) for _ in range(4)]
    nc = enc.noise_ceiling(Ys)
    assert nc.shape == (4, 30) and 0.5 < nc.mean() < 0.9
    with pytest.raises(DataError):
        enc.noise_ceiling(Ys[:1])
    m, ids = enc.roi_means(np.arange(12.0).reshape(2, 6), np.array([0, 1, 1, 2, 2, 2]))
    assert ids.tolist() == [1, 2] and m[0].tolist() == [1.5, 4.0]


def test_planted_voxels_recovered_on_mini(mini):
    """Stage-05 engine on the synthetic mini with the generating features (the HRF-convolved
    regressors): planted voxels found (AUC >= 0.95) and their recovered r within 0.05 of the r the
    generator realised between signal and BOLD."""
    from sklearn.metrics import roc_auc_score

    from lib.data import load_bold, story_timing
    from lib.synthetic import load_truth

    t = load_truth(mini)
    timing = story_timing("pieman", n_trs=300)
    kept = timing.kept_slice(300)
    X = t["regressors"][kept]
    aucs, gaps = [], []
    for i, sub in enumerate(t["subjects"]):
        Y = load_bold(mini / f"{sub}/func/{sub}_task-pieman_run-1_bold.nii.gz",
                      t["brain_mask_img"])[kept]
        res = enc.fit_score(X, Y)
        aucs.append(roc_auc_score(t["planted_in_mask"], res.scores))
        gaps.append(np.mean(res.scores[t["planted_in_mask"]]) - t["realised_r"][i].mean())
    assert min(aucs) >= 0.95, aucs
    assert np.max(np.abs(gaps)) <= 0.05, gaps


def test_group_permutation_is_calibrated_across_subjects():
    """Three 'subjects' of null data, group score = mean over subjects: FPR at 0.05 ~ 5%, with
    and without sequential stopping; the stopped p-values agree with the full ones at 0.05."""
    rng = np.random.default_rng(7)
    n = 240
    X = enc.make_delays(ar_noise(rng, n, 20), [1, 2, 3, 4, 5])
    res = [enc.fit_score(X, ar_noise(rng, n, 1200), n_perm=600, defer_null=True)
           for _ in range(3)]
    obs = np.mean([r.scores for r in res], 0)
    plans = [[r.null_plan] for r in res]
    _, p_seq, done = enc.group_permutation_test(plans, obs, 600, perm_stop=10)
    _, p_full, _ = enc.group_permutation_test(plans, obs, 600, perm_stop=None)
    assert 0.03 <= np.mean(p_seq < 0.05) <= 0.07
    assert 0.03 <= np.mean(p_full < 0.05) <= 0.07
    assert np.mean((p_seq < 0.05) == (p_full < 0.05)) > 0.97
    assert done.mean() < 300                     # most null targets stop early
