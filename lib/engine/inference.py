"""Inference: permutation nulls of brain scores, FDR, noise ceilings, tests across subjects.

Permutation null of a brain score (:class:`NullSpec`, :class:`NullPlan`): the BOLD rows of a fit are
reordered -- in blocks of story time (``block``: the order inside each block is kept, the first
block starts at a random phase so block edges move between permutations) or by a circular shift of
at least ``min_shift`` TRs (``shift``) -- and the held-out predictions are recomputed from the same
fold decompositions with each target's chosen alpha. Repeated hearings of a story get the same
reordering, and every subject gets the same reorderings (seeded by story name), so a group score's
null keeps the subjects' shared, stimulus-locked structure. Reusing the observed alphas is
calibrated on data as smooth as real BOLD (``tests/test_inference.py``, docs/validity.md).

p-values: ``(1 + #null >= observed) / (1 + permutations run)``; with sequential stopping after
``h`` exceedances (Besag & Clifford 1991) a target stops at the permutation L where its h-th
exceedance occurs and gets p = h / L.

Subject-level statistics (the subject is the unit): exact sign-flip permutation test of the mean
difference, Student-t CI of the mean (BCa under-covered with few subjects), Wilcoxon and t tests, Cohen's d_z, and
the smallest p-value each test can reach with n subjects.
"""
from __future__ import annotations

import hashlib
import itertools
import warnings
from dataclasses import dataclass, field

import numpy as np

from .folds import EngineError, aggregate_runs, score_masks
from .ridge import Backend, Design, pearson_cols, r2_cols, standardised


# --------------------------------------------------------------------------- permutations
@dataclass(frozen=True)
class NullSpec:
    """How to build the permutation null of a brain score.

    Parameters
    ----------
    n_perm : int
        Permutations (the most any target gets).
    method : str
        ``block`` (blocks of story time reordered) or ``shift`` (circular shifts).
    block : int
        TRs per block (``block``); :meth:`for_tr` converts 45 s of story time at a TR.
    min_shift : int
        Smallest circular shift in TRs (``shift``).
    perm_batch : int
        Permutations computed at once.
    perm_stop : int or None
        Besag-Clifford sequential stopping: a target stops after this many exceedances.
    """
    n_perm: int = 1000
    method: str = "block"        # block | shift
    block: int = 30              # TRs per block (method = block)
    min_shift: int = 30          # smallest circular shift in TRs (method = shift)
    perm_batch: int = 100
    perm_stop: int | None = 10   # Besag-Clifford: stop a target after this many exceedances

    #: story time the defaults were calibrated on (30 TRs at TR 1.5 s): see :meth:`for_tr`
    BLOCK_S = 45.0

    @classmethod
    def for_tr(cls, tr: float, block: int | None = None, min_shift: int | None = None, **kw
               ) -> "NullSpec":
        """The null for data at repetition time ``tr`` (s): blocks and the smallest shift span
        the same story time (45 s) at every TR unless given in TRs."""
        trs = int(np.ceil(cls.BLOCK_S / float(tr) - 1e-9))
        return cls(block=int(block or trs), min_shift=int(min_shift or trs), **kw)

    def __post_init__(self):
        if self.method not in ("block", "shift"):
            raise EngineError(f"null method must be 'block' or 'shift', got {self.method!r}")


def _story_seed(seed: int, name) -> np.random.Generator:
    h = int(hashlib.sha256(str(name).encode()).hexdigest()[:8], 16)
    return np.random.default_rng([int(seed), h])


def story_orders(n: int, spec: NullSpec, rng: np.random.Generator) -> np.ndarray:
    """(n_perm, n) reorderings of a story's n kept TRs."""
    out = np.empty((spec.n_perm, n), np.int64)
    if spec.method == "shift":
        if n <= 2 * spec.min_shift:
            raise EngineError(f"{n} TRs are too few for circular shifts of >= {spec.min_shift}")
        shifts = rng.integers(spec.min_shift, n - spec.min_shift + 1, spec.n_perm)
        for j, s in enumerate(shifts):
            out[j] = np.roll(np.arange(n), s)
        return out
    L = max(1, int(spec.block))
    for j in range(spec.n_perm):
        phase = int(rng.integers(L))
        cuts = np.r_[0, np.arange(phase or L, n, L), n]
        blocks = [np.arange(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
        out[j] = np.concatenate([blocks[i] for i in rng.permutation(len(blocks))])
    return out


def layout_orders(layout, spec: NullSpec, seed: int = 0, story_names=None) -> np.ndarray:
    """(n_perm, n_rows) row reorderings of a whole design: each story reordered by its own
    (name-seeded) orders, the same for every run (repeat) of the story."""
    names = story_names or {}
    P = np.empty((spec.n_perm, len(layout)), np.int64)
    for s in np.unique(layout.story):
        rows = np.flatnonzero(layout.story == s)
        pos = layout.pos[rows]
        n = int(pos.max()) + 1
        orders = story_orders(n, spec, _story_seed(seed, names.get(int(s), int(s))))
        for run in np.unique(layout.run[rows]):
            rr = rows[layout.run[rows] == run]
            lookup = np.full(n, -1)
            lookup[layout.pos[rr]] = rr
            if (lookup < 0).any():
                raise EngineError("a run does not cover every position of its story")
            P[:, rr] = lookup[orders[:, layout.pos[rr]]]
    return P


@dataclass
class NullPlan:
    """What the permutation null of one fit needs: its design, targets and chosen alphas.

    Parameters
    ----------
    design : Design
        The fit's design (:func:`lib.engine.ridge.prepare`).
    Y : array (n_trs, t)
        The targets it was scored on.
    valid : array of bool (t,)
        Targets that were fitted.
    best : array of int (n_folds, t)
        Index of each target's alpha in each fold (reused by every permutation).
    spec : NullSpec
        How the reorderings are drawn.
    seed : int
        Seeds the reorderings, with each story's name.
    batch_targets : int
        Targets at once (memory).
    """
    design: Design
    Y: np.ndarray
    valid: np.ndarray        # (t,) targets that were fitted
    best: np.ndarray         # (n_folds, t) index of each target's alpha in each fold
    spec: NullSpec
    seed: int = 0
    batch_targets: int = 20000
    orders: np.ndarray = field(init=False, repr=False)     # (n_perm, n_rows) reorderings
    _hats: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self):
        names = dict(enumerate(self.design.layout.names))
        self.orders = layout_orders(self.design.layout, self.spec, self.seed, names)

    def hat(self, f: int, g: int):
        """Fold f's hat matrix for alpha index g (computed once per plan)."""
        if (f, g) not in self._hats:
            self._hats[f, g] = self.design.folds[f].outer.hat(self.design.alphas[g])
        return self._hats[f, g]

    def batch(self, b0: int, b1: int, cols: np.ndarray) -> np.ndarray:
        """Null scores (aggregated like the observed score) of permutations b0..b1 for ``cols``."""
        D = self.design
        P = self.orders[b0:b1]
        acc = np.zeros((D.n_runs, len(P), len(cols)), np.float64)
        cnt = np.zeros(D.n_runs)
        for f, fd in enumerate(D.folds):
            for run in np.unique(D.layout.run[fd.test]):
                cnt[run] += 1
            for c0 in range(0, len(cols), self.batch_targets):
                c = cols[c0:c0 + self.batch_targets]
                Yc = standardised(D.B, self.Y, c)
                hat = (lambda g, f=f: self.hat(f, g))
                for run, rr in fold_null(D.B, fd, hat, self.best[f, c], Yc, P,
                                         D.layout, n_blocks=D.score_blocks).items():
                    acc[run][:, c0:c0 + len(c)] += rr
        run_null = acc / np.maximum(cnt, 1)[:, None, None]
        run_null[cnt == 0] = np.nan
        return aggregate_runs(run_null, D.layout.run_story()).astype(np.float32)


def null_plan(design: Design, Y: np.ndarray, result, spec: NullSpec, seed: int = 0,
              batch_targets: int = 20000) -> "NullPlan":
    """The permutation null of a scored fit, reusing each fold's chosen alphas.

    Parameters
    ----------
    design : Design
        The fit's design.
    Y : array (n_trs, t)
        Its targets.
    result : EncodingResult
        :func:`lib.engine.ridge.score` of ``design`` for ``Y``.
    spec : NullSpec
        How the reorderings are drawn.
    seed : int
        Seeds the reorderings.
    batch_targets : int
        Targets at once.

    Returns
    -------
    NullPlan
        For :func:`permutation_test`.
    """
    return NullPlan(design, Y, result.valid, result.best, spec, seed, batch_targets)


def fold_null(B: Backend, fd, hat, best, Yc, P, layout, metric: str = "r",
              max_bytes: int = 1 << 27, n_blocks: int = 0):
    """Null per-fold score per run {run: (c, t)} for reorderings P (c, n), reusing the fold's
    decompositions: ``hat(g)`` is the (n_test, n_train) hat matrix of hyperparameter group g
    (an alpha, or a band weighting and an alpha) and ``best[j]`` target j's group.

    For an order P the held-out prediction is H_g Y[P[train]] (no re-centring needed since
    H_g 1 = 0 for centred features). A group with many targets is one matrix product,
    [H_g S_1; ...; H_g S_c] @ Y with S_j selecting P_j[train] (building that matrix costs c x
    n_test x n whatever the group's size); a group with fewer targets than test TRs gathers its
    permuted columns instead and multiplies H_g into them (c x n_train x its targets) -- banded
    ridge has dozens of small groups. ``metric``: Pearson ``r`` or ``r2`` (test-centred, as in
    :mod:`lib.engine.partition`); a run's score is the mean over its scoring blocks
    (:func:`lib.engine.folds.score_masks`), as the fit's own.
    """
    n, n_te = Yc.shape[0], len(fd.test)
    masks = score_masks(layout, fd.test, n_blocks)
    out = {run: np.zeros((len(P), Yc.shape[1]), np.float32) for run in masks}
    step = max(1, int(max_bytes // (4 * n_te * n)))
    for c0 in range(0, len(P), step):
        Pc = P[c0:c0 + step]
        c = len(Pc)
        rows = Pc[:, fd.train]
        M, flat = None, None
        for g in np.unique(best):
            sel_np = np.flatnonzero(best == g)
            Ysel = Yc[:, B.idx(sel_np)]
            H = hat(g)
            if len(sel_np) >= n_te:
                if M is None:   # one buffer per chunk: every group writes the same cells
                    M = np.zeros((c, n_te, n), np.float32)
                    flat = ((np.arange(c)[:, None, None] * n_te + np.arange(n_te)[None, :, None])
                            * n + rows[:, None, :]).ravel()
                M.ravel()[flat] = np.broadcast_to(B.to_numpy(H), (c,) + H.shape).ravel()
                pred = (B.asarray(M).reshape(c * n_te, n) @ Ysel).reshape(c, n_te, -1)
            else:
                pred = H @ Ysel[B.idx(rows)]                      # (c, n_test, t_g)
            for run, ms in masks.items():
                out[run][c0:c0 + c, sel_np] = np.mean([B.to_numpy(_score_from_sums(
                    B, pred[:, B.idx(m)], Ysel[B.idx(Pc[:, fd.test[m]])], metric))
                    for m in ms], 0)
    return out


def _score_from_sums(B: Backend, p, y, metric: str):
    """r or test-centred R^2 per column of (c, n, t) arrays from five fused sums (no centred
    copies: on the null's large arrays the copies cost four times the matrix product)."""
    if B.name == "numpy":
        spy = np.einsum("cit,cit->ct", p, y)
        spp = np.einsum("cit,cit->ct", p, p)
        syy = np.einsum("cit,cit->ct", y, y)
    else:
        spy, spp, syy = (p * y).sum(1), (p * p).sum(1), (y * y).sum(1)
    n = p.shape[1]
    sp, sy = p.sum(1), y.sum(1)
    cpy, cpp, cyy = spy - sp * sy / n, spp - sp * sp / n, syy - sy * sy / n
    if metric == "r":
        return cpy / ((cpp * cyy) ** 0.5 + 1e-12)
    return 1 - (cyy - 2 * cpy + cpp) / (cyy + 1e-12)


def batch_schedule(n_perm: int, batch: int, h: int | None) -> list[tuple[int, int]]:
    """Permutation batches: with sequential stopping they start small and double up to
    ``batch`` (a null target with p ~ 0.5 reaches h = 10 exceedances after ~20 permutations,
    so most targets stop inside the first, cheap batch); without it, one batch."""
    out, b0 = [], 0
    size = max(1, min(batch, 2 * h)) if h else batch
    while b0 < n_perm:
        b1 = min(n_perm, b0 + size)
        out.append((b0, b1))
        b0, size = b1, min(batch, size * 2)
    return out


def subject_null(plans: list, b0: int, b1: int, cols: np.ndarray) -> np.ndarray:
    """A subject's null scores: the mean over its plans (e.g. one per seed).

    Parameters
    ----------
    plans : list of NullPlan
        The subject's plans.
    b0, b1 : int
        The permutations wanted (b0 to b1).
    cols : array of int
        The targets wanted.

    Returns
    -------
    array (b1 - b0, len(cols))
        The null scores.
    """
    return np.mean([pl.batch(b0, b1, cols) for pl in plans], 0)


def permutation_test(plans: list[list[NullPlan]], observed: np.ndarray,
                     spec: NullSpec | None = None, batch_fn=None,
                     valid: np.ndarray | None = None):
    """p-values of a group score: the mean over subjects of the mean over each subject's plans.

    Permutation j is applied to every plan. The null's settings have one home, the plans (their
    orders were drawn from them): a ``spec`` that differs from the plans' is an error.

    Parameters
    ----------
    plans : list of list of NullPlan
        ``plans[s]`` holds subject s's plans (e.g. one per seed); a single fit is ``[[plan]]``.
    observed : array (t,)
        The observed group score.
    spec : NullSpec, optional
        Needed only with ``batch_fn`` and no plans.
    batch_fn : callable, optional
        ``batch_fn(b0, b1, cols)`` returns each subject's null scores of permutations b0..b1
        (the plans then live elsewhere, e.g. on Dask workers).
    valid : array of bool (t,), optional
        With ``batch_fn``: the targets that were fitted.

    Returns
    -------
    null : array (n_perm, t)
        The null of the group score (NaN after a target stopped).
    p : array (t,)
        Permutation p-values, (1 + exceedances) / (1 + permutations run).
    n_run : array of int (t,)
        Permutations run per target.
    """
    # one loop of sequential stopping over permutation batches; split, its state would travel
    # through five helpers
    specs = {getattr(pl, "spec", None) for sub in plans for pl in sub} - {None}
    if len(specs) > 1:
        raise EngineError(f"the plans were built with different null settings: {specs}")
    if specs and spec is not None and spec != next(iter(specs)):
        raise EngineError(f"spec {spec} differs from the settings the plans were built with "
                         f"({next(iter(specs))}); leave spec out")
    spec = next(iter(specs)) if specs else spec
    if spec is None:
        raise EngineError("no null settings: give plans or spec")
    n_perm = spec.n_perm
    t = len(observed)
    null = np.full((n_perm, t), np.nan, np.float32)
    exceed = np.zeros(t, np.int64)
    n_done = np.zeros(t, np.int64)
    stopped_p = np.full(t, np.nan)
    active = np.isfinite(observed).copy()
    if valid is not None:
        active &= valid
    for sub in plans:
        for pl in sub:
            active &= pl.valid
    if batch_fn is None:
        def batch_fn(b0, b1, cols):
            return [subject_null(sub, b0, b1, cols) for sub in plans]
    h = spec.perm_stop
    for b0, b1 in batch_schedule(n_perm, spec.perm_batch if h else n_perm, h):
        cols = np.flatnonzero(active)
        if len(cols) == 0:
            break
        g = np.mean(batch_fn(b0, b1, cols), 0)
        hits = g >= observed[cols][None]
        if h:
            cum = exceed[cols][None] + np.cumsum(hits, 0)
            reached = cum >= h
            stop = reached.any(0)
            first = reached.argmax(0)
            L = n_done[cols] + first + 1
            stopped_p[cols[stop]] = h / L[stop]
            upto = np.where(stop, first + 1, b1 - b0)
            live = np.arange(b1 - b0)[:, None] < upto[None]
            g = np.where(live, g, np.nan)
            exceed[cols] += (hits & live).sum(0)
            n_done[cols] += upto
            active[cols[stop]] = False
        else:
            exceed[cols] += hits.sum(0)
            n_done[cols] += b1 - b0
        null[b0:b1, cols] = g
    p = (1 + exceed) / np.maximum(1, 1 + n_done)
    p = np.where(np.isfinite(stopped_p), stopped_p, p).astype(np.float64)
    p[~np.isfinite(observed) | (n_done == 0)] = np.nan
    return null, p, n_done


def fdr_bh(p: np.ndarray, q: float = 0.05) -> np.ndarray:
    """Benjamini-Hochberg false discovery rate control.

    Parameters
    ----------
    p : array
        p-values (NaN is never a discovery).
    q : float
        The FDR level.

    Returns
    -------
    array of bool
        The discoveries.
    """
    from scipy.stats import false_discovery_control

    p = np.asarray(p, float)
    ok = np.isfinite(p)
    out = np.zeros(p.shape, bool)
    if ok.any():
        out[ok] = false_discovery_control(p[ok], method="bh") <= q
    return out


# --------------------------------------------------------------------------- noise ceilings
def zscore_time(y: np.ndarray) -> np.ndarray:
    """Each column z-scored over time (rows); constant columns centred, not divided.

    Parameters
    ----------
    y : array (n_trs, t)
        Responses.

    Returns
    -------
    array (n_trs, t), float64
        The z-scored responses.
    """
    y = np.asarray(y, np.float64)
    sd = y.std(0)
    return (y - y.mean(0)) / np.where(sd > 0, sd, 1.0)


def isc_loso(Ys: list[np.ndarray]) -> np.ndarray:
    """Leave-one-subject-out ISC (n_subjects, t): each subject's series vs the mean of the
    others', every subject z-scored over time first (so no subject dominates the mean)."""
    from .ridge import np_pearson

    if len(Ys) < 2:
        raise EngineError("the noise ceiling needs at least 2 subjects on the same story")
    if len({y.shape for y in Ys}) != 1:
        raise EngineError(f"subjects' BOLD differ in shape: {sorted({y.shape for y in Ys})}")
    Z = np.stack([zscore_time(y) for y in Ys])
    total = Z.sum(0)
    return np.stack([np_pearson(Z[i], (total - Z[i]) / (len(Ys) - 1))
                     for i in range(len(Ys))]).astype(np.float32)


def isc_reliability(Zs: list[np.ndarray], n_iter: int = 1000, seed: int = 0,
                    chunk: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Mean pairwise ISC and its p-value per target against independent circular shifts of every
    subject (the joint null: each permutation shifts all subjects, then recomputes the whole
    statistic; shifting one subject against the others' mean is anti-conservative).

    Each pair's correlation at every relative lag comes from one FFT; a permutation is then a
    lookup.

    Parameters
    ----------
    Zs : list of array (n_trs, t)
        The subjects' series (z-scored here).
    n_iter : int
        Permutations.
    seed : int
        Seeds the shifts.
    chunk : int
        Targets at once (memory).

    Returns
    -------
    isc : array (t,)
        Mean pairwise ISC.
    p : array (t,)
        One-sided permutation p.
    """
    Zs = [zscore_time(z).astype(np.float32) for z in Zs]
    k, (n, t) = len(Zs), Zs[0].shape
    if k < 2:
        raise EngineError("ISC reliability needs at least 2 subjects")
    rng = np.random.default_rng(seed)
    shifts = rng.integers(0, n, (n_iter, k))
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    lag = np.stack([(shifts[:, i] - shifts[:, j]) % n for i, j in pairs], 1)   # (n_iter, P)
    obs, p = np.zeros(t, np.float32), np.zeros(t)
    step = max(1, chunk // max(1, len(pairs) // 16))
    for c0 in range(0, t, step):
        F = [np.fft.rfft(z[:, c0:c0 + step], axis=0) for z in Zs]
        C = np.stack([np.fft.irfft(np.conj(F[i]) * F[j], n=n, axis=0) / n for i, j in pairs])
        o = C[:, 0].mean(0)
        exceed = np.zeros(C.shape[2])
        for b0 in range(0, n_iter, 100):
            nl = C[np.arange(len(pairs))[None, :], lag[b0:b0 + 100]].mean(1)   # (b, chunk)
            exceed += (nl >= o[None] - 1e-9).sum(0)
        obs[c0:c0 + step] = o
        p[c0:c0 + step] = (1 + exceed) / (1 + n_iter)
    return obs, p


def ceiling_from_isc(r_loso: np.ndarray, n_subjects: int) -> np.ndarray:
    """Noise ceiling (the r a perfect stimulus model can reach for one subject) from the
    leave-one-subject-out ISC.

    With y_i = s + e_i and pairwise reliability rho, the mean of the other N - 1 subjects has
    reliability (N-1) rho / (1 + (N-2) rho) (Spearman-Brown) and r_loso = sqrt(rho rho_{N-1});
    solved for rho, the ceiling is sqrt(rho), which no longer depends on N.

    Parameters
    ----------
    r_loso : array
        LOSO ISC per target.
    n_subjects : int
        Subjects in the ISC.

    Returns
    -------
    array
        The ceiling; NaN where r_loso <= 0 (never a clipped value).
    """
    r = np.asarray(r_loso, np.float64)
    k = float(n_subjects)
    r2 = r * r
    rho = (r2 * (k - 2) + np.sqrt(r2 * r2 * (k - 2) ** 2 + 4 * (k - 1) * r2)) / (2 * (k - 1))
    with np.errstate(invalid="ignore"):
        return np.where(r > 0, np.sqrt(np.clip(rho, 0, 1)), np.nan).astype(np.float32)


def repeat_ceiling(y1: np.ndarray, y2: np.ndarray) -> np.ndarray:
    """Ceiling of one run from two hearings of the same story by the same subject.

    Parameters
    ----------
    y1, y2 : array (n_trs, t)
        The two runs' responses on the same story positions.

    Returns
    -------
    array (t,)
        sqrt of the run-to-run correlation (NaN where it is <= 0).
    """
    from .ridge import np_pearson

    r = np_pearson(zscore_time(y1), zscore_time(y2))
    with np.errstate(invalid="ignore"):
        return np.where(r > 0, np.sqrt(np.clip(r, 0, 1)), np.nan).astype(np.float32)


def normalised(scores: np.ndarray, ceiling: np.ndarray, min_ceiling: float = 0.1) -> np.ndarray:
    """Score / ceiling where the ceiling is at least ``min_ceiling`` (NaN elsewhere, counted by
    the callers -- never clipped).

    Parameters
    ----------
    scores, ceiling : array
        Brain scores and noise ceilings of the same targets.
    min_ceiling : float
        The smallest ceiling divided by.

    Returns
    -------
    array
        Normalised scores.
    """
    ceiling = np.asarray(ceiling, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ceiling >= min_ceiling, np.asarray(scores, float) / ceiling, np.nan)


# --------------------------------------------------------------------------- across subjects
def p_min_attainable(n: int) -> float:
    """Smallest two-sided p an exact sign-based test (sign-flip, Wilcoxon) can give with n."""
    return float(min(1.0, 2.0 / 2 ** n)) if n else np.nan


def sign_flip_test(d: np.ndarray, n_mc: int = 100_000, seed: int = 0) -> float:
    """Two-sided sign-flip permutation p-value of mean(d) = 0: exact (all 2^n sign patterns) for
    n <= 16, Monte Carlo (with the observed pattern counted) above."""
    d = np.asarray(d, float)
    d = d[np.isfinite(d)]
    if len(d) == 0 or not np.any(d):
        return np.nan if len(d) == 0 else 1.0
    return float(sign_flip_pvalues(d[:, None], one_sided=False, n_mc=n_mc, seed=seed,
                                   exact_max=16)[0][0])


def sign_flip_pvalues(d: np.ndarray, one_sided: bool = True, n_mc: int = 10_000,
                      seed: int = 0, batch: int = 4096, exact_max: int = 12
                      ) -> tuple[np.ndarray, int]:
    """Per column, the sign-flip p of mean = 0 across subjects.

    Exact over all 2^n patterns for n <= ``exact_max``, else ``n_mc`` random patterns with the
    observed one counted, (1 + hits) / (1 + n_mc).

    Parameters
    ----------
    d : array (n_subjects, t)
        Differences or scores per subject.
    one_sided : bool
        H1: mean > 0 (else two-sided).
    n_mc, seed, batch : int
        Monte Carlo patterns, their seed, patterns at once.
    exact_max : int
        Enumerate every pattern up to this many subjects.

    Returns
    -------
    p : array (t,)
        NaN for columns with a NaN.
    n_patterns : int
        Patterns used.
    """
    d = np.asarray(d, np.float64)
    n, t = d.shape
    exact = n <= exact_max
    signs = (np.array(list(itertools.product((1.0, -1.0), repeat=n))) if exact else
             np.random.default_rng(seed).choice((-1.0, 1.0), size=(n_mc, n)))
    ok = np.isfinite(d).all(0)
    x = np.nan_to_num(d)
    obs = x.mean(0)
    p = np.full(t, np.nan)
    for c in range(0, t, batch):
        stats = signs @ x[:, c:c + batch] / n              # (patterns, cols)
        o = obs[c:c + batch]
        tol = 1e-12 * np.maximum(1.0, np.abs(o))
        hits = (stats >= o - tol if one_sided else np.abs(stats) >= np.abs(o) - tol).sum(0)
        p[c:c + batch] = hits / len(signs) if exact else (1 + hits) / (1 + len(signs))
    p[~ok] = np.nan
    return p, len(signs)


def t_ci(d: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of the mean (nominal coverage with 4-10 subjects on normal
    differences: docs/validity.md).

    Parameters
    ----------
    d : array
        The values.
    level : float
        Confidence level.

    Returns
    -------
    (low, high) : tuple of float
        NaN with fewer than 2 values.
    """
    from scipy import stats

    d = np.asarray(d, float)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return np.nan, np.nan
    half = stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean() - half), float(d.mean() + half)


def paired_stats(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict:
    """Paired comparison of a vs b across subjects (Δ = a - b), the subject as the unit.

    Parameters
    ----------
    a, b : array (n_subjects,)
        One score per subject (pairs with a NaN are left out).
    seed : int
        Seeds the Monte Carlo sign flips when there are too many subjects to enumerate.

    Returns
    -------
    dict
        ``n_subjects``, ``n_improved``, ``mean_delta``, ``median_delta``, ``p_sign_flip``
        (exact two-sided sign flips), ``p_min_attainable``, ``ci95_low``/``ci95_high``
        (Student t), ``cohens_dz``, ``t``/``p_t`` (paired t) and ``p_wilcoxon`` where defined.
    """
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    n = len(d)
    out = dict(n_subjects=n, n_improved=int((d > 0).sum()),
               mean_delta=float(np.mean(d)) if n else np.nan,
               median_delta=float(np.median(d)) if n else np.nan,
               p_sign_flip=sign_flip_test(d, seed=seed), p_min_attainable=p_min_attainable(n))
    lo, hi = t_ci(d)
    out.update(ci95_low=lo, ci95_high=hi, ci_method="t")
    if n >= 2:
        sd = d.std(ddof=1)
        out["cohens_dz"] = float(d.mean() / sd) if sd > 0 else np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            t = stats.ttest_rel(a[ok], b[ok])
        out.update(t=float(t.statistic), p_t=float(t.pvalue))
    if n >= 1 and np.any(d != 0):
        w = stats.wilcoxon(d)
        out.update(wilcoxon_W=float(w.statistic), p_wilcoxon=float(w.pvalue))
    return out


from .second_level import random_effects_map  # noqa: E402,F401  (re-exported)
