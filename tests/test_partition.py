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
    out = {}
    for names in partition.needed_fits(["A", "B"]):
        Xs = [{"A": A, "B": B}[s] for s in names]
        out[names] = partition.banded_fit(Xs, Y, gap=5, n_iter=20)
    return partition.partition(["A", "B"], out)


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
            eng = ridge.fit_score(X, Y, gap=10, select=select)
        band = partition.banded_fit([X], Y, gap=10, select=select)
        assert np.abs(band.r - eng.scores).max() <= 1e-3


@pytest.mark.slow
def test_banded_agrees_with_himalaya():
    """The reference: himalaya's MultipleKernelRidgeCV (random search, R^2 selection) on the same
    folds gives the same joint R^2 to within 0.01 on average (it standardises inner fits
    differently and draws other weightings)."""
    from himalaya.kernel_ridge import MultipleKernelRidgeCV
    from himalaya.scoring import r2_score

    A, B, Y = _data(5, n=400)
    ours = partition.banded_fit([A, B], Y, gap=5, n_iter=20)
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
