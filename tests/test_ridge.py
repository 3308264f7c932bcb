"""The ridge engine: folds, alpha selection, agreement with scikit-learn, leakage on smooth data."""
import warnings

import numpy as np
import pytest

from lib.engine import ridge
from lib.spaces import make_delays
from lib.synthetic import _ar1, smooth_null_features as smooth_features

DELAYS = (1, 2, 3, 4, 5)


# --------------------------------------------------------------------------- folds
def test_contiguous_folds_with_gap_cover_story_time():
    lay = ridge.Layout.single(200, "sim")
    folds = ridge.blocked_folds(lay, 5, gap=10)
    tests = np.concatenate([te for _, te in folds])
    assert np.array_equal(tests, np.arange(200))          # every TR tested once, in order
    for tr, te in folds:
        assert np.all(np.diff(te) == 1)
        assert np.abs(tr[:, None] - te[None]).min() > 10   # >= gap TRs between train and test


def test_repeated_hearings_are_held_out_together():
    lay = ridge.Layout.of_runs([100, 100], ["pieman", "pieman"])
    for tr, te in ridge.blocked_folds(lay, 5, gap=8):
        pos_te = set(lay.pos[te])
        assert set(lay.run[te]) == {0, 1}                  # the block in both hearings
        assert pos_te == set(lay.pos[te[lay.run[te] == 0]]) == set(lay.pos[te[lay.run[te] == 1]])
        d = np.abs(lay.pos[tr][:, None] - np.array(sorted(pos_te))[None]).min()
        assert d > 8                                        # gap in story time, in every run


def test_several_stories_leave_one_story_out():
    lay = ridge.Layout.of_runs([50, 50, 80], ["pieman", "pieman", "tunnel"])
    folds = ridge.blocked_folds(lay, 5, gap=30)
    assert len(folds) == 2
    (tr0, te0), (tr1, te1) = folds
    assert set(lay.story[te0]) == {0} and set(lay.story[tr0]) == {1}
    assert len(te0) == 100 and len(te1) == 80


def test_gap_too_large_is_a_clear_error():
    with pytest.raises(ridge.EngineError, match="leaves no training TRs"):
        ridge.blocked_folds(ridge.Layout.single(60, "sim"), 5, gap=60)


def test_gap_must_match_the_delays_and_the_tr():
    """The folds come in one Splitter, whose gap is given or derived from the delays at a TR
    that is always given (no silent 1.5 s)."""
    X = np.ones((100, 3), np.float32)
    with pytest.raises(ridge.EngineError, match="cv must be a Splitter"):
        ridge.prepare(X, None, {"gap": 5})
    with pytest.raises(TypeError):
        ridge.default_gap((1, 2, 3))                      # the TR is required
    with pytest.raises(ridge.EngineError, match="repetition time must be a positive"):
        ridge.default_gap((1, 2, 3), 0)
    assert ridge.default_gap((1, 2, 3), 1.5) == 3 + 25
    assert ridge.default_gap((1, 2, 3), 2.0) == 3 + 19
    D = ridge.prepare(np.random.default_rng(0).standard_normal((200, 3)), None,
                      ridge.Splitter.for_delays((1, 2), 1.5))
    assert D.gap == 2 + 25


# --------------------------------------------------------------------------- correctness
@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    n, p, t = 300, 60, 200
    X = rng.standard_normal((n, p)).astype(np.float32)
    W = rng.standard_normal((p, t)) * (rng.random(t) < 0.5)
    Y = (X @ W * 0.08 + rng.standard_normal((n, t)) + 50.0).astype(np.float32)  # big offset
    return X, Y, np.abs(W).sum(0) > 0


def _sk_r(Xtr, ytr, Xte, yte, alpha):
    """sklearn reference: features standardised on the fit rows, intercept fitted (float64:
    sklearn in float32 loses the tiny predictions of large penalties under the intercept)."""
    from sklearn.linear_model import Ridge

    Xtr, ytr, Xte, yte = (np.asarray(a, np.float64) for a in (Xtr, ytr, Xte, yte))
    mu, sd = Xtr.mean(0), Xtr.std(0)
    m = Ridge(alpha=alpha, fit_intercept=True).fit((Xtr - mu) / sd, ytr)
    return ridge.np_pearson(m.predict((Xte - mu) / sd).reshape(yte.shape), yte)


def test_alpha_selection_and_scores_match_brute_force(planted):
    """Inner folds: each standardised on its own fit rows; the chosen alpha maximises the mean
    inner validation r (ties go to the larger); the fold r is sklearn's refit with it."""
    X, Y, _ = planted
    Y = Y[:, :25]
    gap = 12
    res = ridge.fit_score(X, Y, None, ridge.Splitter(gap=gap, inner_folds=3))
    lay = ridge.Layout.single(len(X), "sim")
    for f, (tr, te) in enumerate(ridge.blocked_folds(lay, 5, gap)):
        inner = ridge.blocked_folds(lay, 3, gap, rows=tr)
        vr = np.mean([[_sk_r(X[fit], Y[fit], X[val], Y[val], a) for a in ridge.DEFAULT_ALPHAS]
                      for fit, val in inner], 0)                       # (alphas, t)
        chosen = np.searchsorted(ridge.DEFAULT_ALPHAS, res.alphas[f] * (1 - 1e-9))
        assert (vr.max(0) - vr[chosen, np.arange(Y.shape[1])]).max() <= ridge.ALPHA_TIE + 1e-5
        r = np.array([_sk_r(X[tr], Y[tr, j:j + 1], X[te], Y[te, j:j + 1],
                            ridge.DEFAULT_ALPHAS[c])[0] for j, c in enumerate(chosen)])
        np.testing.assert_allclose(res.fold_scores[f, 0], r, atol=1e-4)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("metric", ["r", "r2"])
def test_alpha_scores_equal_each_alpha_scored_afresh(planted, metric, backend):
    """All penalties at once (centred A, one cross product) give the scores of predicting with
    each penalty and scoring it from scratch, kernel and primal forms; a target with NaN
    scores -1 and a constant one r 0, as before."""
    X, Y, _ = planted
    Y = Y.copy()
    Y[:, 3], Y[:, 4] = 7.0, np.nan
    for p in (60, 12):                                         # kernel (n_fit < p) and primal
        D = ridge.prepare(X[:, :p], None, ridge.Splitter(gap=5, n_folds=3, inner_folds=3), backend=backend, device="cpu")
        B, al = D.B, D.alphas
        fn = ridge.pearson_cols if metric == "r" else ridge.r2_cols
        for fd in D.folds:
            Yb = B.asarray(Y)
            ref = np.mean([[np.nan_to_num(B.to_numpy(fn(B, dec.predict(a, dec.project(B, Yb)),
                                                         Yb[B.idx(dec.pred_rows)])), nan=-1.0)
                            for a in al] for dec in fd.inner], 0)
            got = B.to_numpy(ridge.inner_scores(B, fd, al, Yb, metric))
            np.testing.assert_allclose(got, ref, atol=2e-5 if metric == "r" else 1e-4)
            assert np.all(got[:, 4] == -1.0)
            assert metric == "r2" or np.all(np.abs(got[:, 3]) < 1e-6)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_primal_projection_without_the_basis_equals_the_basis(planted, backend):
    """The primal form projects few targets as V^T (Xf^T Y), without forming Bm = (Xf V)^T;
    past as many targets as fit rows it forms Bm once. Both give (Xf V)^T Y, and the hat
    matrix is the same either way; the standardised fit and prediction rows equal
    zscore_on's."""
    X, Y, _ = planted
    D = ridge.prepare(X[:, :12], None, ridge.Splitter(gap=5, n_folds=3, inner_folds=3), backend=backend, device="cpu")
    B = D.B
    dec = D.folds[0].outer
    n_fit = len(dec.fit)
    assert dec.Bm is None and n_fit > 12                       # primal, nothing formed yet
    Xf, V = B.to_numpy(dec.Xf), B.to_numpy(dec.V)
    Xz = B.to_numpy(ridge.zscore_on(B, B.asarray(X[:, :12]), dec.fit))
    np.testing.assert_allclose(Xf, Xz[dec.fit], rtol=0, atol=0)
    ref = (Xf @ V).T @ Y[dec.fit].astype(np.float64)
    few = B.to_numpy(dec.project(B, B.asarray(Y[:, :5])))
    assert dec.Bm is None                                      # still not formed
    np.testing.assert_allclose(few, ref[:, :5], rtol=1e-4, atol=1e-3)
    many = np.hstack([Y] * (n_fit // Y.shape[1] + 1))          # more targets than fit rows
    got = B.to_numpy(dec.project(B, B.asarray(many)))
    assert dec.Bm is not None and dec.Xf is None               # formed once, rows dropped
    np.testing.assert_allclose(got[:, :Y.shape[1]], ref, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(B.to_numpy(dec.hat(10.0)),
                               B.to_numpy(dec.A) / (B.to_numpy(dec.lam) + 10.0) @ (Xf @ V).T,
                               rtol=1e-4, atol=1e-5)


def test_agrees_with_sklearn_ridgecv_with_intercept(planted):
    """One alpha: fold r equals sklearn RidgeCV(fit_intercept=True) on features standardised on
    the training rows (the engine's target offset never matters)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    X, Y, _ = planted
    res = ridge.fit_score(X, Y[:, :20], None, ridge.Splitter(gap=5), alphas=[100.0])
    for f, (tr, te) in enumerate(ridge.blocked_folds(ridge.Layout.single(len(X), "sim"), 5, 5)):
        sc = StandardScaler().fit(X[tr])
        m = RidgeCV(alphas=[100.0], fit_intercept=True).fit(sc.transform(X[tr]),
                                                            Y[tr, :20].astype(np.float64))
        np.testing.assert_allclose(res.fold_scores[f, 0],
                                   ridge.np_pearson(m.predict(sc.transform(X[te])), Y[te, :20]),
                                   atol=1e-4)


def test_numpy_and_torch_backends_agree(planted):
    X, Y, _ = planted
    a = ridge.fit_score(X, Y, None, ridge.Splitter.for_delays(DELAYS, 1.5), backend="numpy")
    b = ridge.fit_score(X, Y, None, ridge.Splitter.for_delays(DELAYS, 1.5), backend="torch", device="cpu")
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_batches_do_not_change_scores(planted):
    X, Y, _ = planted
    a = ridge.fit_score(X, Y, None, ridge.Splitter.for_delays(DELAYS, 1.5), batch_targets=10_000)
    b = ridge.fit_score(X, Y, None, ridge.Splitter.for_delays(DELAYS, 1.5), batch_targets=37)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


def test_planted_signal_scores_and_null_does_not(planted):
    X, Y, has = planted
    res = ridge.fit_score(X, Y, None, ridge.Splitter.for_delays(DELAYS, 1.5))
    assert res.scores[has].mean() > 0.15 and abs(res.scores[~has].mean()) < 0.03
    assert np.isfinite(res.concat_r).all()


def test_runs_scored_separately_and_aggregated_by_story():
    rng = np.random.default_rng(2)
    F = rng.standard_normal((120, 8)).astype(np.float32)
    X = np.vstack([make_delays(F, DELAYS)] * 2 + [make_delays(F[:100], DELAYS)])
    Y = rng.standard_normal((len(X), 30)).astype(np.float32)
    lay = ridge.Layout.of_runs([120, 120, 100], ["pieman", "pieman", "tunnel"])
    res = ridge.fit_score(X, Y, lay, ridge.Splitter.for_delays(DELAYS, 1.5))
    assert res.run_scores.shape == (3, 30)
    expect = (res.run_scores[:2].mean(0) + res.run_scores[2]) / 2   # runs in story, stories equal
    np.testing.assert_allclose(res.scores, expect, atol=1e-6)


def test_held_out_story_scored_per_block_in_the_single_story_unit():
    """With ``score_blocks``, a held-out story's r is the mean r over the contiguous blocks that
    blocked folds cut one story into (the unit of a single-story subject); without, its
    whole-story r. Single-story designs ignore it (their folds are already blocks)."""
    rng = np.random.default_rng(3)
    X = make_delays(_ar1(rng, 240, 8, 0.9), DELAYS)
    Y = (X[:, :4] @ rng.standard_normal((4, 20)) + 3 * _ar1(rng, 240, 20, 0.9)
         ).astype(np.float32)
    lay = ridge.Layout.of_runs([120, 120], ["a", "b"])
    whole = ridge.score(ridge.prepare(X, lay, ridge.Splitter.for_delays(DELAYS, 1.5)), Y)
    D = ridge.prepare(X, lay, ridge.Splitter.for_delays(DELAYS, 1.5, score_blocks=5))
    blocks = ridge.score(D, Y)
    rows, pred, _ = ridge.heldout_predictions(D, Y)
    for run in (0, 1):
        m = lay.run[rows] == run
        p, y = pred[m], Y[rows[m]]
        per_block = np.mean([ridge.np_pearson(p[a:a + 24], y[a:a + 24])
                             for a in range(0, 120, 24)], 0)
        np.testing.assert_allclose(blocks.run_scores[run], per_block, atol=1e-5)
        np.testing.assert_allclose(whole.run_scores[run], ridge.np_pearson(p, y), atol=1e-5)
    assert np.abs(blocks.run_scores - whole.run_scores).max() > 0.01
    assert D.scheme == "leave-one-story-out, r per 5 blocks of each held-out story"
    assert ridge.prepare(X[:120], ridge.Layout.single(120, "a"), ridge.Splitter(gap=5, score_blocks=5)).score_blocks == 0


# --------------------------------------------------------------------------- leakage
def test_default_gap_removes_the_autocorrelation_leak():
    """Acceptance: smooth null features x AR(0.9) BOLD, 300 TRs, 64 features x 5 delays,
    3000 targets over 10 independent feature sets: mean held-out r within +-0.005 of 0 with the
    default folds; a gap of max(delay) = 5 TRs (the old default) leaves a clear positive bias."""
    default, old = [], []
    for seed in range(10):
        rng = np.random.default_rng(1000 + seed)
        X = smooth_features(rng, 300)
        Y = _ar1(rng, 300, 300, 0.9)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            default.append(ridge.fit_score(X, Y, None, ridge.Splitter.for_delays(DELAYS, 1.5)).scores.mean())
            old.append(ridge.fit_score(X, Y, None, ridge.Splitter(gap=5)).scores.mean())
    assert abs(np.mean(default)) <= 0.005, np.mean(default)
    assert np.mean(old) > 0.015, np.mean(old)


# --------------------------------------------------------------------------- diagnostics
def test_constant_and_nan_voxels_are_excluded_and_counted(planted):
    X, Y, _ = planted
    Y = Y[:, :10].copy()
    Y[:, 3] = 5.0
    Y[7, 4] = np.nan
    with pytest.warns(UserWarning, match="2 of 10 targets are constant or contain NaN"):
        res = ridge.fit_score(X, Y, None, ridge.Splitter.for_delays(DELAYS, 1.5))
    assert res.n_invalid == 2 and not res.valid[3] and not res.valid[4]
    assert np.isnan(res.scores[[3, 4]]).all() and np.isfinite(res.scores[[0, 1, 2, 5]]).all()


def test_bad_inputs(planted):
    X, Y, _ = planted
    with pytest.raises(ridge.EngineError, match=r"features have 300 TRs but BOLD has 299 TRs "
                                                r"\(a\.nii vs b\.npz\)"):
        ridge.fit_score(X, Y[:-1], None, ridge.Splitter.for_delays(DELAYS, 1.5), source="a.nii vs b.npz")
    with pytest.raises(ridge.EngineError, match="leaves no training TRs"):
        ridge.fit_score(X[:40], Y[:40], None, ridge.Splitter.for_delays(DELAYS, 1.5))
    with pytest.raises(ridge.EngineError, match="all features are zero"):
        ridge.fit_score(np.zeros_like(X), Y, None, ridge.Splitter.for_delays(DELAYS, 1.5))
    with pytest.raises(ridge.EngineError, match="no targets"):
        ridge.fit_score(X, Y[:, :0], None, ridge.Splitter.for_delays(DELAYS, 1.5))


def test_alpha_edge_is_reported_and_warned_for_a_single_target():
    """A grid that stops before the best penalty is flagged for one target too; a plateau of
    equal r at the top is not an edge."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 20)).astype(np.float32)
    y = (X[:, :1] + 0.5 * rng.standard_normal((200, 1))).astype(np.float32)  # wants a small one
    with pytest.warns(UserWarning, match="at the edge of the grid"):
        res = ridge.fit_score(X, y, None, ridge.Splitter(gap=5), alphas=[1e3, 1e4, 1e5])
    assert res.edge_fraction > 0.5 and res.edge.shape == (5, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wide = ridge.fit_score(X, y, None, ridge.Splitter(gap=5), alphas=np.logspace(-3, 8, 12))
    assert wide.edge_fraction == 0


@pytest.mark.parametrize("tr", [1.0, 2.0])
def test_the_gap_is_story_time_and_stays_unbiased_at_other_trs(tr):
    """The gap's margin is seconds, not TRs: at TR 1.0 and 2.0 s (the same 450 s story, the same
    time constants: phi ** (tr / 1.5)) smooth null features x AR BOLD stay within +-0.005 of 0."""
    from lib.synthetic import smooth_null_features

    k, n = tr / 1.5, int(round(450 / tr))
    assert ridge.default_gap(DELAYS, tr) == 5 + int(np.ceil(37.5 / tr))
    bias = []
    for seed in range(10):
        rng = np.random.default_rng(2000 + seed)
        X = smooth_null_features(rng, n, phi=0.9 ** k)
        Y = _ar1(rng, n, 300, 0.9 ** k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bias.append(ridge.fit_score(X, Y, None, ridge.Splitter.for_delays(DELAYS, tr)).scores.mean())
    assert abs(np.mean(bias)) <= 0.005, (tr, np.mean(bias))
