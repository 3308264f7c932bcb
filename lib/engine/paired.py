"""Two models compared on the same held-out responses of one subject (the unit: held-out time).

With two subjects no group test exists, so the question "does model A predict this subject better
than model B?" is answered within the subject, on the TRs both models predicted without having
trained on them:

* the score of a model is the Pearson r of its prediction, per target and held-out story, averaged
  over stories (each story counts equally), then over a set of targets (e.g. the first 10
  response components);
* ``delta`` = score(A) - score(B) on exactly the same TRs and targets. With every series z-scored
  within its story, r = mean_t z(y) z(p), so delta is exactly a weighted sum over TRs of
  d(t) = mean over targets of z(y) (z(pa) - z(pb)) -- the per-TR difference of fit;
* d(t) is as smooth as BOLD, so TRs are not independent: each story's TRs are cut into contiguous
  blocks of ``block`` TRs (:func:`choose_block`: a multiple of the integrated autocorrelation time
  of d measured in the data), and delta is the sum of the blocks' contributions c_j;
* p: a paired permutation test that exchanges the two models' predictions block by block; an
  exchange flips the sign of that block's c_j (to first order in the normalisation), so the null
  is the sign-flip distribution of the c_j; two-sided;
* both use the sum of the c_j over a standard error that lets neighbouring blocks covary
  (:func:`hac_se`); the CI is that test inverted (:func:`inverted_ci`), so the two agree (a
  percentile block bootstrap under-covered and plain sign flips were liberal: docs/validity.md,
  5b).

Calibration on data as smooth as real BOLD is tested in ``tests/test_paired.py`` and measured in
docs/validity.md.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .docs import fill_doc
from .folds import EngineError


def _z(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float64)
    sd = v.std(0)
    return (v - v.mean(0)) / np.where(sd > 0, sd, 1.0)


def fit_difference(y: np.ndarray, pa: np.ndarray, pb: np.ndarray, segments: np.ndarray,
                   cols) -> np.ndarray:
    """d(t), the per-TR difference in fit whose block sums make Δ, for a set of targets; every
    series is z-scored within its story.

    Parameters
    ----------
    y, pa, pb : array (n_rows, n_targets)
        Responses and the two models' predictions.
    segments : array (n_rows,)
        Each row's story.
    cols : array of int
        The targets.

    Returns
    -------
    array (n_rows,)
        d(t).
    """
    d = np.zeros(len(y))
    for s in pd.unique(segments):
        m = segments == s
        d[m] = (_z(y[m][:, cols]) * (_z(pa[m][:, cols]) - _z(pb[m][:, cols]))).mean(1)
    return d


def autocorr_time(d: np.ndarray, segments: np.ndarray) -> float:
    """Integrated autocorrelation time of d, (1 + rho) / (1 - rho) with rho its lag-1
    autocorrelation (pooled over stories): exact for an AR(1) series, and far less biased on
    a few hundred TRs than summing the sample autocorrelations (which stop early and measured
    7 instead of 9.5 TRs on AR(0.9) x AR(0.9) products)."""
    parts = [d[segments == s] - d[segments == s].mean() for s in pd.unique(segments)]
    den = sum(float(p @ p) for p in parts)
    if den <= 0:
        return 1.0
    rho = min(0.99, max(0.0, sum(float(p[:-1] @ p[1:]) for p in parts if len(p) > 1) / den))
    return (1 + rho) / (1 - rho)


#: block length in integrated autocorrelation times of d (docs/validity.md 5b)
BLOCK_FACTOR = 6.0


def choose_block(d: np.ndarray, segments: np.ndarray, factor: float = BLOCK_FACTOR,
                 min_block: int = 10) -> int:
    """Block length (TRs): ``factor`` integrated autocorrelation times of d, at least
    ``min_block``, and at most a third of the shortest story (at least 3 blocks per story)."""
    shortest = min(int((segments == s).sum()) for s in pd.unique(segments))
    return int(np.clip(np.ceil(factor * autocorr_time(d, segments)), min_block,
                       max(min_block, shortest // 3)))


#: from this many held-out stories on, whole stories are exchanged (one block per story): exact
#: under the exchange null whatever the autocorrelation and the per-story normalisation, which
#: blocks inside a story share (blocks ran liberal on 30 AR(0.95) stories: docs/validity.md 5b)
STORY_UNIT_MIN = 10


@fill_doc
def choose_unit(d: np.ndarray, segments: np.ndarray) -> int:
    """The block length of the exchange: each story one block when there are at least
    :data:`STORY_UNIT_MIN` stories, else a few autocorrelation times (:func:`choose_block`).

    Parameters
    ----------
    %(d_segments)s

    Returns
    -------
    int
        Block length in TRs.
    """
    names, counts = np.unique(segments, return_counts=True)
    if len(names) >= STORY_UNIT_MIN:
        return int(counts.max())
    return choose_block(d, segments)


def exchange_unit_of(block: int, segments: np.ndarray) -> str:
    """The exchange unit in words.

    Parameters
    ----------
    block : int
        Block length in TRs.
    segments : array
        Each row's story.

    Returns
    -------
    str
        ``story`` where ``block`` makes each story one block, else ``blocks of N TRs``.
    """
    _, counts = np.unique(segments, return_counts=True)
    return "story" if block >= counts.max() else f"blocks of {block} TRs"


@fill_doc
def block_contributions(d: np.ndarray, segments: np.ndarray, block: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut d(t) into blocks: each block's share of Δ and of the weights.

    A story's TRs are cut into round(n / block) nearly equal contiguous blocks; Δ is the mean
    over stories of each story's mean d.

    Parameters
    ----------
    %(d_segments)s
    block : int
        Block length in TRs.

    Returns
    -------
    c : array (J,)
        Each block's contribution (sum(c) = Δ).
    w : array (J,)
        Each block's share of the weights (sum(w) = 1).
    seg : array (J,)
        Each block's story index.
    """
    out, wts, seg = [], [], []
    stories = list(pd.unique(segments))
    for i, s in enumerate(stories):
        ds = d[segments == s]
        k = max(1, int(round(len(ds) / block)))
        edges = np.linspace(0, len(ds), k + 1).round().astype(int)
        for a, b in zip(edges[:-1], edges[1:]):
            out.append(ds[a:b].sum() / len(ds) / len(stories))
            wts.append((b - a) / len(ds) / len(stories))
            seg.append(i)
    return np.asarray(out), np.asarray(wts), np.asarray(seg)


def hac_se(c: np.ndarray, seg: np.ndarray, bandwidth: int = 2) -> np.ndarray:
    """Standard error of sum(c) (c: (..., J)) allowing nearby blocks of a story to covary: a
    Bartlett kernel over block lags (weight 1 - k / ``bandwidth`` for lag k < bandwidth; the
    default weighs the neighbour products by 1/2), times J / (J - 1), around zero. The kernel is
    positive definite, so the variance never falls below zero (a neighbour weight of 1 drove the
    SE towards zero on 45-TR blocks: docs/validity.md 5b)."""
    J = c.shape[-1]
    v = (c * c).sum(-1)
    for k in range(1, int(bandwidth)):
        same = seg[k:] == seg[:-k]
        v = v + 2 * (1 - k / bandwidth) * (c[..., k:] * c[..., :-k] * same).sum(-1)
    return np.sqrt(np.clip(v, 1e-300, None) * J / (J - 1))


def sign_patterns(J: int, n_perm: int, seed: int = 0) -> np.ndarray:
    """(n, J) signs of the block-exchange null: all 2^J patterns when there are at most
    ``n_perm`` of them (the test is then exact), else ``n_perm`` random ones with the identity
    first. The p-value and the inverted CI use the same patterns, so they always agree."""
    if 2 ** J <= n_perm:
        return (1 - 2 * ((np.arange(2 ** J)[:, None] >> np.arange(J)) & 1)).astype(float)
    signs = np.random.default_rng([seed, 1]).choice([-1.0, 1.0], size=(n_perm, J))
    signs[0] = 1.0
    return signs


def _studentised(e: np.ndarray, seg: np.ndarray) -> float:
    return float(abs(e.sum()) / hac_se(e, seg))


def flip_p(e: np.ndarray, seg: np.ndarray, signs: np.ndarray) -> float:
    """Two-sided p of the studentised sum(e) under the sign patterns ``signs`` (an exchange of
    the two models' predictions in the flipped blocks; the identity pattern counts, so p > 0)."""
    obs = _studentised(e, seg)
    exceed = 0
    for i in range(0, len(signs), 2000):
        f = signs[i:i + 2000] * e
        exceed += int((np.abs(f.sum(1)) / hac_se(f, seg) >= obs - 1e-12).sum())
    return exceed / len(signs)


def sign_flip_p(c: np.ndarray, seg: np.ndarray, n_perm: int = 10000, seed: int = 0) -> float:
    """Two-sided block-exchange p of sum(c): studentised sign flips of the blocks.

    Parameters
    ----------
    c : array (J,)
        Block contributions (:func:`block_contributions`).
    seg : array (J,)
        Each block's story.
    n_perm : int
        Sign patterns.
    seed : int
        Seeds the patterns (:func:`sign_patterns`).

    Returns
    -------
    float
        The p-value.
    """
    return flip_p(c, seg, sign_patterns(len(c), n_perm, seed))


def inverted_ci(c: np.ndarray, w: np.ndarray, seg: np.ndarray, level: float = 0.95,
                n_perm: int = 10000, seed: int = 0) -> tuple[float, float]:
    """The block-exchange test inverted: every Δ0 that the test does not reject at 1 - level
    when applied to c_j - Δ0 w_j, with the same sign patterns as its p-value, so the CI excludes
    0 exactly when p < 1 - level (bisection on each side).

    Parameters
    ----------
    c, w, seg : array (J,)
        Block contributions, weights and stories (:func:`block_contributions`).
    level : float
        Confidence level.
    n_perm : int
        Sign patterns.
    seed : int
        Seeds the patterns.

    Returns
    -------
    (low, high) : tuple of float
    """
    delta = float(c.sum())
    signs = sign_patterns(len(c), n_perm, seed)
    alpha = 1 - level

    def p_at(d0):
        return flip_p(c - d0 * w, seg, signs)

    step = 2 * float(hac_se(c - delta * w, seg)) + 1e-12
    ends = []
    for sgn in (-1, 1):
        inside, out = delta, delta + sgn * step
        for _ in range(30):                     # widen (doubling) until the test rejects
            if p_at(out) < alpha:
                break
            inside, out = out, delta + 2 * (out - delta)
        else:       # studentised sums are scale-free: with too few blocks nothing is rejected
            ends.append(sgn * np.inf)
            continue
        for _ in range(30):
            mid = (inside + out) / 2
            inside, out = (mid, out) if p_at(mid) >= alpha else (inside, mid)
        ends.append(inside)
    return ends[0], ends[1]


def target_scores(y: np.ndarray, p: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """The r of each target per story, averaged over stories.

    Parameters
    ----------
    y, p : array (n_rows, n_targets)
        Responses and predictions.
    segments : array (n_rows,)
        Each row's story.

    Returns
    -------
    array (n_targets,)
        The brain score of each target.
    """
    return np.mean([(_z(y[segments == s]) * _z(p[segments == s])).mean(0)
                    for s in pd.unique(segments)], 0)


def mde(se: float, df: float = np.inf, level: float = 0.95, power: float = 0.8) -> float:
    """The smallest |Δ| a two-sided test at 1 - ``level`` detects with probability ``power``
    when Δ / se follows Student t with ``df`` degrees of freedom (normal for df = inf)."""
    from scipy import stats

    return float((stats.t.ppf(0.5 + level / 2, df) + stats.t.ppf(power, df)) * se)


def block_terms(d: np.ndarray, segments: np.ndarray, block: int) -> tuple[np.ndarray, ...]:
    """(c, w, seg) of :func:`block_contributions`: one cut of held-out time into blocks that
    every model, seed and checkpoint compared on these TRs shares."""
    return block_contributions(d, segments, int(block))


def paired_comparison(y: np.ndarray, pa: np.ndarray, pb: np.ndarray, segments: np.ndarray,
                      target_sets: dict, block: int | None = None, n_perm: int = 10000,
                      level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Two models compared on the same held-out time of one subject: Δ = score(pa) - score(pb)
    for each named set of targets, its CI and its block-exchange permutation p.

    Parameters
    ----------
    y, pa, pb : array (n_rows, n_targets)
        Held-out responses and the two models' predictions on the same rows.
    segments : array (n_rows,)
        Each row's story.
    target_sets : dict
        ``{name: target columns}``.
    block : int, optional
        Block length in TRs; None measures it from each set's d(t) (:func:`choose_unit`).
    n_perm : int
        Sign patterns of the exchange test (and of the inverted CI).
    level : float
        Confidence level.
    seed : int
        Seeds the sign patterns.

    Returns
    -------
    pandas.DataFrame
        One row per set: ``score_a``, ``score_b``, ``delta``, ``ci_low``, ``ci_high``, ``p``,
        the block standard error ``se``, the minimum detectable effect ``mde`` (80% power,
        two-sided), ``block_trs``, ``exchange_unit``, ``n_blocks``, ``autocorr_trs``, ``n_trs``.
    """
    y, pa, pb = (np.asarray(v, np.float64) for v in (y, pa, pb))
    if not (y.shape == pa.shape == pb.shape):
        raise EngineError(f"responses {y.shape} and predictions {pa.shape}, {pb.shape} differ")
    segments = np.asarray(segments)
    if len(segments) != len(y):
        raise EngineError(f"{len(segments)} story labels for {len(y)} rows")
    ra, rb = target_scores(y, pa, segments), target_scores(y, pb, segments)
    rows = []
    for name, cols in target_sets.items():
        cols = np.asarray(cols)
        d = fit_difference(y, pa, pb, segments, cols)
        L = int(block or choose_unit(d, segments))
        c, w, seg = block_contributions(d, segments, L)
        lo, hi = inverted_ci(c, w, seg, level, n_perm, seed)
        se = float(hac_se(c - c.sum() * w, seg))
        rows.append(dict(targets=name, n_targets=len(cols), score_a=float(ra[cols].mean()),
                         score_b=float(rb[cols].mean()), delta=float(c.sum()), ci_low=lo,
                         ci_high=hi, p=sign_flip_p(c, seg, n_perm, seed), se=se,
                         mde=mde(se, len(c) - 1, level), block_trs=L,
                         exchange_unit=exchange_unit_of(L, segments),
                         n_blocks=len(c), autocorr_trs=round(autocorr_time(d, segments), 2),
                         n_trs=len(y)))
    return pd.DataFrame(rows)
