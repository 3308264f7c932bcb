"""Banded ridge (himalaya) in this project's folds, and variance partitioning."""
import warnings

import numpy as np
import pytest

from lib.engine import partition, ridge


def _data(seed, n=600, share_a=0.25, share_b=0.15, overlap=0.0):
    """Two spaces A (5 features) and B (20 features); Y gets share_a of its variance from A and
    share_b from B (B's part independent of A); B also carries A's features when ``overlap``."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, 5))
    B = rng.standard_normal((n, 20))
    B[:, :5] += overlap * A
    t = 40
    sa = A @ rng.standard_normal((5, t))
    sb = rng.standard_normal((n, 20)) @ np.zeros((20, t)) if share_b == 0 else \
        (B[:, 5:] @ rng.standard_normal((15, t)))
    sa, sb = (s / np.maximum(s.std(0), 1e-12) for s in (sa, sb))
    Y = np.sqrt(share_a) * sa + np.sqrt(share_b) * sb + \
        np.sqrt(1 - share_a - share_b) * rng.standard_normal((n, t))
    return A.astype(np.float32), B.astype(np.float32), Y.astype(np.float32)


def _fits(A, B, Y):
    return partition.partition(["A", "B"], partition.partition_fits([A, B], Y, ["A", "B"], None, partition.Splitter(gap=5), n_iter=20))


def test_band_weights_are_nested():
    """Every fit without band b searches exactly the joint fit's weightings with w_b = 0, and
    fewer bands come first (ties go to the simpler model)."""
    for k in (2, 3, 4):
        W, Wr = partition.band_weights(k, 5), partition.band_weights(k - 1, 5)
        for drop in range(k):
            sub = W[W[:, drop] == 0][:, [b for b in range(k) if b != drop]]
            assert sorted(map(tuple, sub.round(9))) == sorted(map(tuple, Wr.round(9)))
        assert np.all(np.diff((W > 5e-4).sum(1)) >= 0)
        np.testing.assert_allclose(W.sum(1), 1.0)


def test_reduced_fit_is_the_joint_search_restricted():
    """The reduced fit drawn from the joint designs equals a fit of that band alone."""
    A, B, Y = _data(3, n=300)
    fits = partition.partition_fits([A, B], Y, ["A", "B"], None, partition.Splitter(gap=5), n_iter=5)
    alone = partition.banded_fit([A], Y, None, partition.Splitter(gap=5), select="r")
    np.testing.assert_allclose(fits[("A",)].r, alone.r, atol=2e-5)
    assert np.all(fits[("A", "B")].weights[:, 1] >= 0)


def _unique_b(kind, share, r, n_rep, n=300):
    """Per replication, the 6 subjects' mean unique R^2 of band B (smooth BOLD, shared features)."""
    from lib.synthetic import two_band_subjects

    out = []
    for rep in range(n_rep):
        A, B, Y = two_band_subjects(rep, n, kind=kind, unique_share=share, r=r)
        fits = partition.partition_fits([A, B], Y, ["A", "B"], ridge.Layout.single(n, "sim"), partition.Splitter(gap=30), n_iter=5)
        u = partition.partition(["A", "B"], fits)["unique:B"]
        out.append(u.reshape(6, -1).mean(1))
    return np.array(out)


@pytest.mark.slow
def test_unique_of_a_redundant_band_is_never_credited_and_its_test_is_valid():
    """A band that only copies the other (noisily) on data as smooth as real BOLD: its unique
    share is not credited (the selection noise of a single story biases it down, never up,
    docs/validity.md) and the across-subject one-sided test stays at or below its level; a band
    with a real share of the signal is found."""
    from lib.engine.inference import sign_flip_pvalues

    for kind, n_rep in (("redundant", 40), ("copy", 15)):
        null = _unique_b(kind, 0.0, 0.35, n_rep)
        assert null.mean() < 0.002, (kind, null.mean())
        assert np.mean(sign_flip_pvalues(null.T)[0] < 0.05) <= 0.065
    real = _unique_b("independent", 0.3, 0.6, 15, n=600)
    assert real.mean() > 0.01, real.mean()
    assert np.mean(sign_flip_pvalues(real.T)[0] < 0.05) >= 0.3     # 7 of 15 here; 0 under the null


@pytest.mark.slow
def test_signal_in_the_low_level_space_only_is_not_credited_to_the_lm():
    """Y from A alone; B (the 'LM') carries A's information too. B's unique variance ~ 0,
    A's is recovered."""
    A, B, Y = _data(1, share_a=0.3, share_b=0.0, overlap=1.0)
    p = _fits(A, B, Y)
    assert abs(np.mean(p["unique:B"])) < 0.01, np.mean(p["unique:B"])
    assert np.mean(p["joint"]) > 0.2 and np.mean(p["unique:A"]) > 0.03


@pytest.mark.slow
def test_partition_recovers_known_shares():
    """Independent spaces with 25% and 15% of the variance: unique shares within 0.04 of the
    truth (held-out estimates, 600 TRs), shared ~ 0, and the split shares add up to the joint."""
    A, B, Y = _data(2)
    p = _fits(A, B, Y)
    assert abs(np.mean(p["unique:A"]) - 0.25) < 0.04, np.mean(p["unique:A"])
    assert abs(np.mean(p["unique:B"]) - 0.15) < 0.04, np.mean(p["unique:B"])
    assert abs(np.mean(p["shared"])) < 0.03
    np.testing.assert_allclose(p["split:A"] + p["split:B"], p["joint"], atol=1e-6)


def test_one_band_equals_the_single_space_engine():
    rng = np.random.default_rng(4)
    n = 300
    X = rng.standard_normal((n, 30)).astype(np.float32)
    Y = (X[:, :5] @ rng.standard_normal((5, 60)) * 0.4 + rng.standard_normal((n, 60))
         ).astype(np.float32)
    for select in ("r", "r2"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eng = ridge.fit_score(X, Y, None, ridge.Splitter(gap=10), select=select)
        band = partition.banded_fit([X], Y, None, partition.Splitter(gap=10), select=select)
        assert np.abs(band.r - eng.scores).max() <= 1e-3


def test_one_band_equals_the_engine_with_stories_scored_per_block():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((300, 20)).astype(np.float32)
    Y = (X[:, :5] @ rng.standard_normal((5, 40)) * 0.4 + rng.standard_normal((300, 40))
         ).astype(np.float32)
    lay = ridge.Layout.of_runs([150, 150], ["a", "b"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eng = ridge.score(ridge.prepare(X, lay, ridge.Splitter(gap=10, score_blocks=5)), Y)
    band = partition.banded_score(partition.banded_prepare([X], lay, partition.Splitter(gap=10, score_blocks=5)), Y,
                                  select="r", measure="rsq")
    assert np.abs(band.r - eng.scores).max() <= 1e-3


@pytest.mark.slow
def test_banded_agrees_with_himalaya():
    """The reference: himalaya's MultipleKernelRidgeCV (random search, R^2 selection) on the same
    folds gives the same joint R^2 to within 0.01 on average (it standardises inner fits
    differently and draws other weightings)."""
    from himalaya.kernel_ridge import MultipleKernelRidgeCV
    from himalaya.scoring import r2_score

    A, B, Y = _data(5, n=400)
    ours = partition.banded_fit([A, B], Y, None, partition.Splitter(gap=5), n_iter=20)
    lay = ridge.Layout.single(len(Y), "sim")
    r2 = []
    for train, test in ridge.blocked_folds(lay, 5, 5):
        pos = {r: i for i, r in enumerate(train)}
        cv = [(np.array([pos[r] for r in f]), np.array([pos[r] for r in v]))
              for f, v in ridge.blocked_folds(lay, 4, 5, rows=train)]
        z = [(X - X[train].mean(0)) / X[train].std(0) for X in (A, B)]
        K = np.stack([x[train] @ x[train].T for x in z])
        Kt = np.stack([x[test] @ x[train].T for x in z])
        m = MultipleKernelRidgeCV(kernels="precomputed", cv=cv, random_state=0, solver_params=dict(
            n_iter=20, alphas=ridge.DEFAULT_ALPHAS, score_func=r2_score,
            progress_bar=False))
        m.fit(K, Y[train] - Y[train].mean(0))
        r2.append(partition._r2(Y[test].astype(float), np.asarray(m.predict(Kt))))
    assert abs(np.mean(r2) - np.mean(ours.r2)) < 0.01, (np.mean(r2), np.mean(ours.r2))


def _vs_placebo(kind, share, r, n_rep, conditional=True, n=300):
    """Per replication, the 6 subjects' mean unique share of band B against its placebo."""
    from lib.synthetic import two_band_subjects

    out = []
    for rep in range(n_rep):
        A, B, Y = two_band_subjects(rep, n, kind=kind, unique_share=share, r=r)
        lay = ridge.Layout.single(n, "sim")
        designs = partition.banded_prepare([A, B], lay, partition.Splitter(gap=30), n_iter=5)
        placebos = partition.placebo_band_designs([A, B], 1, lay, partition.Splitter(gap=30), n_iter=5, conditional=conditional, joint=designs)
        out.append([_unique_vs_placebo(designs, placebos, y, lay) for y in np.split(Y, 6, axis=1)])
    return np.array(out)


def _unique_vs_placebo(designs, placebos, y, lay) -> float:
    """As stage 05 scores it: the placebo fits share the joint fit's memo (the joint designs they
    reuse are scored once)."""
    memo = {}
    joint = partition.banded_score(designs, y, memo=memo, **partition.SCORING)
    return partition.aggregate_runs(partition.unique_vs_placebo(
        joint, partition.placebo_scores(placebos, y, memo=memo)), lay.run_story()).mean()


@pytest.mark.slow
def test_unique_against_the_conditional_placebo_credits_neither_redundant_band_nor_copy():
    """Against its conditional placebo (its part that A explains kept, its residual shifted), a
    band that adds nothing gets ~0 whether it is a noisy mixture of A or nearly a copy of A --
    where the classic R^2(A, B) - R^2(A) was -0.009 and the whole band shifted credited the
    copy -- and a band with a real unique share is found."""
    from lib.engine.inference import sign_flip_pvalues

    for kind in ("redundant", "copy"):
        null = _vs_placebo(kind, 0.0, 0.35, 20)
        assert abs(null.mean()) < 0.003, (kind, null.mean())
        assert np.mean(sign_flip_pvalues(null.T)[0] < 0.05) <= 0.15, kind
    real = _vs_placebo("independent", 0.3, 0.6, 10)
    assert real.mean() > 0.01 and np.mean(sign_flip_pvalues(real.T)[0] < 0.05) >= 0.3


@pytest.mark.slow
def test_whole_band_shifted_credits_a_near_copy():
    """The limitation that makes the placebo conditional: with the whole band shifted, a band
    that nearly copies the other comes out positive (sft's features nearly copy raw's)."""
    copy = _vs_placebo("copy", 0.0, 0.35, 15, conditional=False)
    assert copy.mean() > 0.003, copy.mean()


def test_placebo_reuses_the_joint_designs_that_never_see_the_band():
    """A weighting with w_b = 0 never sees band b: the placebo fits take the joint fit's design
    for it (not decomposed again), and score exactly as if it had been rebuilt."""
    from lib.synthetic import two_band_subjects

    A, B, Y = two_band_subjects(0, 200, n_subjects=1, kind="redundant")
    lay = ridge.Layout.single(200, "sim")
    joint = partition.banded_prepare([A, B], lay, partition.Splitter(gap=10), n_iter=3)
    fast = partition.placebo_band_designs([A, B], 1, lay, partition.Splitter(gap=10), n_iter=3, n_shifts=1, joint=joint)[0]
    slow = partition.placebo_band_designs([A, B], 1, lay, partition.Splitter(gap=10), n_iter=3, n_shifts=1)[0]
    zero = [w[1] == 0 for w in partition.band_weights(2, 3)]
    assert any(zero) and not all(zero)
    assert all((d is j) == z for d, j, z in zip(fast, joint, zero))
    np.testing.assert_allclose(partition.placebo_scores([fast], Y)[0].run_r2,
                               partition.placebo_scores([slow], Y)[0].run_r2, atol=1e-6)


def test_explained_part_keeps_what_the_other_bands_explain():
    rng = np.random.default_rng(0)
    n = 400
    Z = rng.standard_normal((n, 8))
    own = rng.standard_normal((n, 3))
    X = Z @ rng.standard_normal((8, 3)) + 0.5 * own + 2.0
    lay = ridge.Layout.single(n, "sim")
    fit = partition.explained_part(X, Z, lay, gap=5)
    resid = X - X.mean(0) - fit
    assert np.abs(fit.mean(0)).max() < 1e-8                        # centred
    np.testing.assert_allclose(np.corrcoef(resid.T, own.T)[:3, 3:].diagonal(), 1, atol=0.03)
    assert np.abs(Z.T @ resid / n).max() < 0.05                     # nothing of Z left over
    alone = partition.explained_part(own, Z, lay, gap=5)                        # Z explains nothing of it
    assert (alone ** 2).sum() / ((own - own.mean(0)) ** 2).sum() < 0.05
    wide = rng.standard_normal((n, 2 * n))              # more columns than rows: no interpolation
    alone = partition.explained_part(own, wide, lay, gap=5)
    assert (alone ** 2).sum() / ((own - own.mean(0)) ** 2).sum() < 0.2


def test_shift_rows_stays_inside_each_run():
    lay = ridge.Layout.of_runs([4, 6])
    X = np.arange(10, dtype=np.float32)[:, None]
    out = partition.shift_rows(X, lay, 0.5)
    assert out[:4, 0].tolist() == [2, 3, 0, 1] and out[4:, 0].tolist() == [7, 8, 9, 4, 5, 6]
    np.testing.assert_allclose(partition.shift_fractions(4), [0.2, 0.4, 0.6, 0.8])


def test_unique_test_is_across_subjects_and_one_sided():
    """Sign flips of the subjects' unique R^2 (maps and summary targets), one-sided: a share
    every subject shows is found, a negative one never is."""
    from lib.reduction import unique_test

    rng = np.random.default_rng(0)
    u = rng.normal(0.0, 0.01, (8, 50))
    u[:, :10] += 0.03                     # 10 voxels with a real unique share in every subject
    u[:, 10:20] -= 0.03                   # 10 where the band only costs
    u[:, -1] += 0.03                      # the last summary target
    g = unique_test(u, ["whole_brain_mean", "roi"], "lm:sft", [0])
    assert g["p"].shape == (48,) and np.all(g["p"][:10] <= 2 / 256)
    assert np.all(g["p"][10:20] > 0.9) and g["fdr"][:10].all() and not g["fdr"][10:].any()
    s = g["summary"].set_index("target")
    assert s.loc["roi", "p_value"] == 1 / 256 and s.loc["roi", "ci95_low"] > 0
    assert (s.n_subjects == 8).all() and s.condition.iloc[0] == "partition unique_vs_placebo:lm:sft"
