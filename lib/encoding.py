"""Stage 05: ridge encoding models and brain scores.

Pipeline for one BOLD run (or several runs, concatenated):

1. Word activations -> features per TR: the ``sum`` (default) or ``mean`` of the activations of the
   words whose onset falls in the TR (stage 02's word->TR rule); TRs without words are zeros. The
   sum keeps word rate in the features, which is itself a strong predictor of auditory cortex.
2. FIR delays (default 1..5 TRs = 1.5-7.5 s): zero padding inside each run, never wrapping around
   and never crossing run boundaries. Delays are built on the full scan, then the trimmed TRs
   (story metadata) are dropped from features and BOLD alike.
3. Outer cross-validation: contiguous folds (default 5, never shuffled); ``gap`` TRs (default = the
   longest delay) on each side of the test block are removed from the training set, so the model is
   never trained on TRs whose delayed features overlap the test block. With several runs: leave one
   run out.
4. Inside each outer training set: features and BOLD standardised with training statistics only; one
   ridge penalty per target chosen from ``alphas`` on a contiguous inner validation block (again with
   a gap), all alphas from ONE eigendecomposition (kernel form when TRs < features, primal
   otherwise); the model is refit on the whole outer training set (a second decomposition) and
   predicts the test block.
5. Brain score = Pearson r of prediction vs held-out BOLD per target, averaged over folds. The r of
   the concatenated held-out predictions is kept as a diagnostic only: per-fold intercepts bias it.

Backends: ``numpy`` or ``torch`` (CPU or CUDA) run the same code through a tiny array-namespace shim.
Targets are processed in batches so memory stays bounded.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from .data import DataError

DEFAULT_ALPHAS = np.logspace(-1, 8, 10)
DEFAULT_DELAYS = (1, 2, 3, 4, 5)
ALPHA_TIE = 1e-4  # validation-r ties (float noise) go to the larger penalty


# --------------------------------------------------------------------------- features per TR
def tr_features(word_acts: np.ndarray, word_trs: np.ndarray, n_trs: int, how: str = "sum"
                ) -> np.ndarray:
    """(n_trs, d) features from (n_words, d) activations and each word's TR index."""
    word_acts = np.asarray(word_acts, np.float32)
    if len(word_acts) != len(word_trs):
        raise DataError(f"{len(word_acts)} word activations but {len(word_trs)} word TRs")
    out = np.zeros((n_trs, word_acts.shape[1]), np.float32)
    np.add.at(out, word_trs, word_acts)
    if how == "mean":
        counts = np.bincount(word_trs, minlength=n_trs).astype(np.float32)
        out /= np.maximum(counts, 1)[:, None]
    elif how != "sum":
        raise ValueError(f"aggregation must be 'sum' or 'mean', got {how!r}")
    return out


def word_rate(word_trs: np.ndarray, n_trs: int) -> np.ndarray:
    """Baseline feature: words per TR, (n_trs, 1)."""
    return np.bincount(word_trs, minlength=n_trs).astype(np.float32)[:, None]


def make_delays(X: np.ndarray, delays=DEFAULT_DELAYS, run_lengths=None) -> np.ndarray:
    """FIR-delayed copies of X side by side: column block k holds X shifted down by delays[k].

    Zero-padded inside each run (``run_lengths`` splits the rows); nothing wraps around.
    """
    X = np.asarray(X)
    run_lengths = list(run_lengths) if run_lengths is not None else [len(X)]
    if sum(run_lengths) != len(X):
        raise ValueError(f"run lengths {run_lengths} do not add up to {len(X)} rows")
    out = np.zeros((len(X), X.shape[1] * len(delays)), X.dtype)
    start = 0
    for n in run_lengths:
        x = X[start:start + n]
        for k, d in enumerate(delays):
            block = out[start:start + n, k * X.shape[1]:(k + 1) * X.shape[1]]
            if d >= 0:
                block[d:] = x[:n - d] if d < n else 0
            else:
                block[:n + d] = x[-d:]
        start += n
    return out


# --------------------------------------------------------------------------- folds
def contiguous_folds(n: int, n_folds: int = 5, gap: int = 5, run_lengths=None
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs. One run: ``n_folds`` contiguous test blocks, ``gap`` TRs removed
    from training on each side of the block. Several runs: leave one run out (no gap needed)."""
    if run_lengths is not None and len(run_lengths) > 1:
        bounds = np.cumsum([0] + list(run_lengths))
        return [(np.r_[0:bounds[i], bounds[i + 1]:n], np.arange(bounds[i], bounds[i + 1]))
                for i in range(len(run_lengths))]
    if n_folds < 2:
        raise ValueError("need at least 2 folds")
    edges = np.linspace(0, n, n_folds + 1).round().astype(int)
    folds = []
    for a, b in zip(edges[:-1], edges[1:]):
        test = np.arange(a, b)
        train = np.r_[0:max(0, a - gap), min(n, b + gap):n]
        folds.append((train, test))
    return folds


def inner_split(train: np.ndarray, test: np.ndarray, frac: float = 0.2, gap: int = 5
                ) -> tuple[np.ndarray, np.ndarray]:
    """A contiguous validation block inside ``train``: the end (or start) of the training indices
    farthest from the test block, with ``gap`` training TRs dropped between it and the fit part."""
    n_val = max(2, int(round(frac * len(train))))
    at_end = abs(train[-1] - test.mean()) >= abs(train[0] - test.mean())
    if at_end:
        val, fit = train[-n_val:], train[:max(0, len(train) - n_val - gap)]
    else:
        val, fit = train[:n_val], train[n_val + gap:]
    # a fold boundary may already separate them (train is not contiguous); keep the gap anyway
    return fit, val


# --------------------------------------------------------------------------- backends
class _Backend:
    """The handful of array operations the engine needs, for numpy or torch."""

    def __init__(self, name: str = "numpy", device: str | None = None, dtype: str = "float32"):
        self.name = name
        if name == "numpy":
            self.xp = np
            self.dtype = np.dtype(dtype)
            self.device = "cpu"
        elif name == "torch":
            import torch

            self.xp = torch
            self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            self.dtype = getattr(torch, dtype)
        else:
            raise ValueError(f"backend must be 'numpy' or 'torch', got {name!r}")

    def asarray(self, a, dtype=None):
        if self.name == "numpy":
            return np.asarray(a, dtype=dtype or self.dtype)
        import torch

        t = torch.as_tensor(np.asarray(a), device=self.device)
        return t.to(dtype or self.dtype)

    def to_numpy(self, a) -> np.ndarray:
        if self.name == "numpy":
            return a
        a = a.detach()
        return (a.float() if a.is_floating_point() else a).cpu().numpy()

    def eigh(self, G):
        """Eigendecomposition in float64 (Gram matrices square the condition number)."""
        if self.name == "numpy":
            lam, U = np.linalg.eigh(G.astype(np.float64))
            return lam.astype(self.dtype), U.astype(self.dtype)
        import torch

        lam, U = torch.linalg.eigh(G.to(torch.float64))
        return lam.to(self.dtype), U.to(self.dtype)


def _zscore_cols(B, a, idx_fit, eps=1e-8):
    """Standardise columns of ``a`` with the mean/std of rows ``idx_fit``. Returns (z, std)."""
    xp = B.xp
    mu = a[idx_fit].mean(0)
    sd = ((a[idx_fit] - mu) ** 2).mean(0) ** 0.5
    sd_safe = xp.where(sd > eps, sd, xp.ones_like(sd))
    return (a - mu) / sd_safe, sd


def _pearson_cols(B, p, y, eps=1e-12):
    """Column-wise Pearson r of p and y, shape (..., n, t) -> (..., t)."""
    p = p - p.mean(-2, keepdims=True) if B.name == "numpy" else p - p.mean(-2, keepdim=True)
    y = y - y.mean(-2, keepdims=True) if B.name == "numpy" else y - y.mean(-2, keepdim=True)
    num = (p * y).sum(-2)
    den = ((p * p).sum(-2) * (y * y).sum(-2)) ** 0.5
    return num / (den + eps)


@dataclass
class _Decomp:
    """Spectral form of ridge on one training set: pred(alpha) = (A / (lam + alpha)) @ (Bm @ Y)."""
    lam: object
    A: object    # (n_pred, m): the rows to predict, projected
    Bm: object   # (m, n_train): maps training targets into the eigenbasis


def _decompose(B, Xtr, Xpred) -> _Decomp:
    n, p = Xtr.shape
    if n <= p:  # kernel form: K = Xtr Xtr^T = U diag(lam) U^T
        lam, U = B.eigh(Xtr @ Xtr.T)
        return _Decomp(B.xp.clip(lam, 0, None), (Xpred @ Xtr.T) @ U, U.T)
    lam, V = B.eigh(Xtr.T @ Xtr)  # primal: X^T X = V diag(lam) V^T
    return _Decomp(B.xp.clip(lam, 0, None), Xpred @ V, (Xtr @ V).T)


@dataclass
class EncodingResult:
    """Per-target scores; arrays are numpy. ``valid`` marks targets that were fitted."""
    scores: np.ndarray            # (t,) mean over folds of per-fold r (the brain score)
    fold_scores: np.ndarray       # (n_folds, t)
    alphas: np.ndarray            # (n_folds, t) chosen alpha per fold
    valid: np.ndarray             # (t,) bool
    concat_r: np.ndarray          # (t,) diagnostic: r of concatenated held-out predictions
    n_invalid: int = 0
    edge_fraction: float = 0.0    # share of choices at the edge of the alpha grid
    null: np.ndarray | None = None    # (n_perm, t) permutation null of ``scores``
    pvalues: np.ndarray | None = None
    null_plan: "NullPlan | None" = None
    info: dict = field(default_factory=dict)


def _validate(X, Y, folds, delays_max, source: str):
    if len(X) != len(Y):
        raise DataError(f"TR mismatch: features have {len(X)} TRs but BOLD has {len(Y)} TRs"
                        + (f" ({source})" if source else ""))
    if not np.any(X):
        raise DataError(f"all features are zero{f' ({source})' if source else ''}")
    if Y.shape[1] == 0:
        raise DataError(f"no targets (empty mask?){f' ({source})' if source else ''}")
    n_folds = len(folds)
    if len(X) < n_folds * max(1, delays_max) * 2:
        raise DataError(f"{len(X)} TRs are too few for {n_folds} folds with delays up to "
                        f"{delays_max} TRs" + (f" ({source})" if source else ""))


def fit_score(X: np.ndarray, Y: np.ndarray, folds=None, alphas=DEFAULT_ALPHAS, n_folds: int = 5,
              gap: int = 5, inner_frac: float = 0.2, backend: str = "numpy",
              device: str | None = None, batch_targets: int = 20000, n_perm: int = 0,
              perm_block: int = 10, seed: int = 0, source: str = "",
              run_lengths=None, dtype: str = "float32", perm_batch: int = 100,
              perm_stop: int | None = 10, defer_null: bool = False) -> EncodingResult:
    """Cross-validated ridge brain scores of features ``X`` (n, p) for targets ``Y`` (n, t).

    ``X`` should already carry its delays. ``n_perm`` > 0 adds a block-permutation null: BOLD is
    shuffled in blocks of ``perm_block`` TRs, the held-out predictions are recomputed from the same
    decompositions with each target's chosen alpha, and p = (1 + #null >= observed) / (1 + n_perm)
    (see :func:`group_permutation_test`).
    With ``perm_stop = h`` the permutations run in batches of ``perm_batch`` and a target stops as
    soon as ``h`` null scores reach its observed score; its p-value is then h / (permutations run)
    (Besag & Clifford 1991, a valid p-value). Most null targets stop within the first batch, so the
    maps cost a fraction of ``n_perm`` full permutations; targets that keep going get the full
    resolution 1 / (1 + n_perm). ``perm_stop=None`` runs every permutation for every target.
    """
    X = np.asarray(X, np.float32)
    Y = np.asarray(Y, np.float32)
    if folds is None:
        folds = contiguous_folds(len(X), n_folds, gap, run_lengths)
    _validate(X, Y, folds, gap, source)
    alphas = np.sort(np.asarray(alphas, np.float64))
    t = Y.shape[1]
    finite = np.isfinite(Y).all(0)
    with np.errstate(invalid="ignore"):
        valid = finite & (np.ptp(Y, axis=0) > 1e-6)                  # not constant over the run
    if not valid.any():
        raise DataError(f"every target is constant or NaN{f' ({source})' if source else ''}")
    B = _Backend(backend, device, dtype)
    xp = B.xp
    Xb = B.asarray(X)
    vidx = np.flatnonzero(valid)
    fold_scores = np.full((len(folds), t), np.nan, np.float32)
    fold_alpha = np.full((len(folds), t), np.nan, np.float64)
    # sufficient statistics of the concatenated held-out predictions (diagnostic r) -- no
    # (n, t) prediction matrix is kept, so memory stays at the BOLD plus one batch
    cs = {k: np.zeros(t, np.float64) for k in ("p", "pp", "y", "yy", "py")}
    rng = np.random.default_rng(seed)
    perms = [_block_permutation(len(X), perm_block, rng) for _ in range(n_perm)]
    kept_folds = []  # (decomposition, alpha index per valid target, train, test) for the null
    late_invalid = np.zeros(t, bool)

    for f, (train, test) in enumerate(folds):
        fit, val = inner_split(train, test, inner_frac, gap)
        Xz, _ = _zscore_cols(B, Xb, _idx(B, train))
        inner = _decompose(B, Xz[_idx(B, fit)], Xz[_idx(B, val)])
        outer = _decompose(B, Xz[_idx(B, train)], Xz[_idx(B, test)])
        for s in range(0, len(vidx), batch_targets):
            cols = vidx[s:s + batch_targets]
            Yb = B.asarray(Y[:, cols[0]:cols[-1] + 1] if cols[-1] - cols[0] + 1 == len(cols)
                           else Y[:, cols])              # a slice when contiguous: no copy
            Yz, sd = _zscore_cols(B, Yb, _idx(B, train))
            const = B.to_numpy(sd <= 1e-6)         # constant inside this training set
            if const.any():
                late_invalid[cols[const]] = True
            # alpha per target on the inner validation block; validation r within ALPHA_TIE of
            # the best counts as a tie and goes to the larger penalty (also keeps backends agreeing)
            BY = inner.Bm @ Yz[_idx(B, fit)]
            yv = Yz[_idx(B, val)]
            rs = xp.stack([xp.nan_to_num(_pearson_cols(B, (inner.A / (inner.lam + float(a))) @ BY,
                                                       yv), nan=-1.0) for a in alphas])
            ok = rs >= xp.amax(rs, 0) - ALPHA_TIE
            best = len(alphas) - 1 - (xp.flip(ok, (0,)).to(xp.uint8) if B.name == "torch"
                                      else ok[::-1]).argmax(0)
            best_np = B.to_numpy(best)
            fold_alpha[f, cols] = alphas[best_np]
            # refit on the whole training set, one decomposition, grouped by alpha
            BYo = outer.Bm @ Yz[_idx(B, train)]
            pred = xp.zeros((len(test), len(cols)), dtype=B.dtype) if B.name == "numpy" else \
                xp.zeros((len(test), len(cols)), dtype=B.dtype, device=B.device)
            for a_i in np.unique(best_np):
                sel = np.flatnonzero(best_np == a_i)
                seli = _idx(B, sel)
                pred[:, seli] = (outer.A / (outer.lam + float(alphas[a_i]))) @ BYo[:, seli]
            yt = Yz[_idx(B, test)]
            fold_scores[f, cols] = B.to_numpy(_pearson_cols(B, pred, yt))
            yraw = Yb[_idx(B, test)]
            for k, v in (("p", pred.sum(0)), ("pp", (pred * pred).sum(0)), ("y", yraw.sum(0)),
                         ("yy", (yraw * yraw).sum(0)), ("py", (pred * yraw).sum(0))):
                cs[k][cols] += B.to_numpy(v)
            if n_perm:
                kept_folds.append((f, s, outer, best_np, train, test))
    valid &= ~late_invalid
    vidx_ok = np.flatnonzero(valid)
    n_invalid = int((~valid).sum())
    if n_invalid:
        warnings.warn(f"{n_invalid} of {t} targets are constant or contain NaN and are left out "
                      f"of fitting{f' ({source})' if source else ''}; their scores are NaN",
                      stacklevel=2)
    scores = np.nanmean(fold_scores, 0) if len(folds) else np.full(t, np.nan)
    scores[~valid] = np.nan
    fold_scores[:, ~valid] = np.nan
    m = sum(len(te) for _, te in folds)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = cs["py"] - cs["p"] * cs["y"] / m
        concat_r = (cov / np.sqrt((cs["pp"] - cs["p"] ** 2 / m) * (cs["yy"] - cs["y"] ** 2 / m))
                    ).astype(np.float32)
    concat_r[~valid] = np.nan
    chosen = fold_alpha[:, vidx_ok]
    edge = float(np.mean((chosen == alphas[0]) | (chosen == alphas[-1]))) if chosen.size else 0.0
    if edge > 0.2 and len(alphas) > 2 and len(vidx) >= 20:  # a share of a few choices says little
        warnings.warn(f"{edge:.0%} of alpha choices are at the edge of the grid "
                      f"[{alphas[0]:g}, {alphas[-1]:g}]; consider widening it"
                      f"{f' ({source})' if source else ''}", stacklevel=2)
    res = EncodingResult(scores, fold_scores, fold_alpha, valid, concat_r, n_invalid, edge,
                         info=dict(n_folds=len(folds), gap=gap, backend=backend,
                                   n_trs=len(X), n_features=X.shape[1]))
    if n_perm:
        plan = NullPlan(B, Y, vidx, batch_targets, kept_folds, len(folds), alphas, perms)
        res.info.update(n_perm=n_perm, perm_block=perm_block, perm_stop=perm_stop)
        if defer_null:  # a group test will run the permutations across subjects
            res.null_plan = plan
            return res
        null, pvals, n_done = group_permutation_test([[plan]], scores, n_perm, perm_batch,
                                                     perm_stop)
        res.null, res.pvalues = null, pvals
        res.info.update(mean_perms_per_target=float(np.mean(n_done[vidx])))
    return res


def _idx(B, idx):
    if B.name == "numpy":
        return np.asarray(idx)
    import torch

    return torch.as_tensor(np.asarray(idx), device=B.device)


def _np_pearson(p, y):
    p = p - p.mean(0)
    y = y - y.mean(0)
    return (p * y).sum(0) / (np.sqrt((p * p).sum(0) * (y * y).sum(0)) + 1e-12)


# --------------------------------------------------------------------------- permutations
def _block_permutation(n: int, block: int, rng) -> np.ndarray:
    """Row order that shuffles contiguous blocks of ``block`` TRs (the last may be shorter),
    keeping the order inside each block so the BOLD's autocorrelation survives."""
    starts = np.arange(0, n, block)
    order = rng.permutation(len(starts))
    return np.concatenate([np.arange(starts[i], min(n, starts[i] + block)) for i in order])


def _fold_null(B, dec: _Decomp, alphas, best_np, Yb, train, test, perms):
    """Null per-fold r (len(perms), t) for each permutation, reusing the fold's decomposition.

    For a permutation P the held-out prediction is H_a (P Y)_train, centred with the permuted
    training mean, where H_a = A diag(1/(lam+a)) Bm (r does not depend on the per-target scaling
    of standardisation). Written as one matrix product per alpha group,
    [H_a S_train P_1; ...; H_a S_train P_c] @ Y, instead of gathering c permuted copies of Y.
    """
    c, t = len(perms), Yb.shape[1]
    n, n_tr, n_te = Yb.shape[0], len(train), len(test)
    out = np.zeros((c, t), np.float32)
    P = np.stack(perms)
    rows = P[:, train]                                              # (c, n_train) source rows
    jj = np.arange(c)[:, None, None]
    ii = np.arange(n_te)[None, :, None]
    Mm = np.zeros((c, n), np.float32)
    Mm[np.arange(c)[:, None], rows] = 1.0 / n_tr
    Mm = B.asarray(Mm)
    Yte = Yb[_idx(B, P[:, test])]                                   # (c, n_test, t)
    for a_i in np.unique(best_np):
        sel_np = np.flatnonzero(best_np == a_i)
        sel = _idx(B, sel_np)
        H = (dec.A / (dec.lam + float(alphas[a_i]))) @ dec.Bm      # (n_test, n_train)
        Hn = B.to_numpy(H)
        M = np.zeros((c, n_te, n), np.float32)
        M[jj, ii, rows[:, None, :]] = Hn[None]
        M = B.asarray(M)
        Ya = Yb[:, sel]
        pred = (M.reshape(c * n_te, n) @ Ya).reshape(c, n_te, -1)
        pred -= H.sum(1)[None, :, None] * (Mm @ Ya)[:, None, :]
        r = _pearson_cols(B, pred, Yte[:, :, sel])
        out[:, sel_np] = B.to_numpy(r)
    return out


@dataclass
class NullPlan:
    """What the permutation null of one fit needs: its data, folds' decompositions and alphas."""
    B: object
    Y: np.ndarray
    vidx: np.ndarray
    batch_targets: int
    kept_folds: list
    n_folds: int
    alphas: np.ndarray
    perms: list

    def batch(self, b0: int, b1: int, cols: np.ndarray) -> np.ndarray:
        """Null scores (mean over folds of per-fold r) of permutations b0..b1 for ``cols``."""
        bp = self.perms[b0:b1]
        acc = np.zeros((len(bp), self.Y.shape[1]), np.float32)
        want = np.zeros(self.Y.shape[1], bool)
        want[cols] = True
        for f, s, dec, best_np, train, test in self.kept_folds:
            block = self.vidx[s:s + self.batch_targets]
            keep = want[block]
            if not keep.any():
                continue
            c = block[keep]
            acc[:, c] += _fold_null(self.B, dec, self.alphas, best_np[keep],
                                    self.B.asarray(self.Y[:, c]), train, test, bp)
        return acc[:, cols] / self.n_folds


def group_permutation_test(plans: list[list[NullPlan]], scores: np.ndarray, n_perm: int,
                           perm_batch: int = 100, perm_stop: int | None = 10):
    """Permutation p-values of a group score = mean over subjects of (mean over their runs).

    ``plans[s]`` holds the NullPlans of subject s's runs. Permutation j is applied to every run,
    the null group score is averaged the same way as the observed one, and targets are dropped
    once ``perm_stop`` null scores reach the observed one (Besag & Clifford: p = h / L), else
    p = (1 + exceedances) / (1 + n_perm). Returns (null (n_perm, t) with NaN where a target had
    stopped, p-values, permutations run per target).
    """
    t = len(scores)
    null = np.full((n_perm, t), np.nan, np.float32)
    exceed = np.zeros(t, np.int64)
    n_done = np.zeros(t, np.int64)
    stopped_p = np.full(t, np.nan)
    active = np.isfinite(scores).copy()
    for sub in plans:
        for pl in sub:
            ok = np.zeros(t, bool)
            ok[pl.vidx] = True
            active &= ok
    batch = perm_batch if perm_stop else n_perm
    for b0 in range(0, n_perm, batch):
        cols = np.flatnonzero(active)
        if len(cols) == 0:
            break
        b1 = min(n_perm, b0 + batch)
        g = np.mean([np.mean([pl.batch(b0, b1, cols) for pl in sub], 0) for sub in plans], 0)
        null[b0:b1, cols] = g
        exceed[cols] += (g >= scores[cols][None]).sum(0)
        n_done[cols] += b1 - b0
        if perm_stop:
            stop = active & (exceed >= perm_stop)
            stopped_p[stop] = exceed[stop] / n_done[stop]
            active &= ~stop
    p = (1 + exceed) / np.maximum(1, 1 + n_done)
    p = np.where(np.isfinite(stopped_p), stopped_p, p).astype(np.float64)
    p[~np.isfinite(scores) | (n_done == 0)] = np.nan
    return null, p, n_done


def fdr_bh(p: np.ndarray, q: float = 0.05) -> np.ndarray:
    """Benjamini-Hochberg: boolean mask of discoveries at level q (NaN p-values are never)."""
    from scipy.stats import false_discovery_control

    p = np.asarray(p, float)
    ok = np.isfinite(p)
    out = np.zeros(p.shape, bool)
    if ok.any():
        out[ok] = false_discovery_control(p[ok], method="bh") <= q
    return out


# --------------------------------------------------------------------------- targets & ceiling
def whole_brain_mean(Y: np.ndarray) -> np.ndarray:
    """The seed's target: the mean BOLD over the mask per TR, (n, 1)."""
    return np.nanmean(Y, axis=1, keepdims=True)


def roi_means(Y: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean BOLD per label (labels over the mask's voxels; 0 = none). Returns (n, n_rois), ids."""
    labels = np.asarray(labels).astype(int)
    ids = np.array(sorted(set(labels[labels > 0].tolist())))
    if len(ids) == 0:
        raise DataError("labels image has no label > 0 inside the mask")
    return np.column_stack([Y[:, labels == i].mean(1) for i in ids]), ids


def noise_ceiling(Ys: list[np.ndarray]) -> np.ndarray:
    """Leave-one-subject-out inter-subject correlation per target: (n_subjects, t).

    Each subject's BOLD vs the mean of the others' on the same story (same TRs). Its mean over
    subjects estimates how much of a target is stimulus-driven and shared, the usual ceiling for
    encoding scores.
    """
    if len(Ys) < 2:
        raise DataError("the noise ceiling needs at least 2 subjects on the same story")
    n = {len(y) for y in Ys}
    if len(n) != 1:
        raise DataError(f"subjects' BOLD have different TR counts {sorted(n)}")
    S = np.stack(Ys).astype(np.float32)
    total = S.sum(0)
    return np.stack([_np_pearson(S[i], (total - S[i]) / (len(Ys) - 1)) for i in range(len(Ys))])


def normalised(scores: np.ndarray, ceiling: np.ndarray, min_ceiling: float = 0.1) -> np.ndarray:
    """Score / ceiling where the ceiling is at least ``min_ceiling`` (NaN elsewhere)."""
    ceiling = np.asarray(ceiling, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ceiling >= min_ceiling, scores / ceiling, np.nan)


# --------------------------------------------------------------------------- stage runner
def design_matrix(word_acts: np.ndarray, word_trs: np.ndarray, n_trs: int, kept: slice,
                  delays=DEFAULT_DELAYS, how: str = "sum") -> np.ndarray:
    """Delayed TR features on the full scan, then the kept (untrimmed) TRs."""
    F = tr_features(word_acts, word_trs, n_trs, how)
    return make_delays(F, delays)[kept]


def brain_mask(manifest, mask: str | None = "auto"):
    """The mask image: a path, or ``auto`` = the dataset's own brain mask when it ships one
    (narratives-mini), else nilearn's MNI152 brain mask resampled to the BOLD grid."""
    import nibabel as nib
    from pathlib import Path

    if mask and mask != "auto":
        if not Path(mask).exists():
            raise DataError(f"{mask}: mask file not found")
        return nib.load(str(mask))
    first = Path(manifest.iloc[0]["bold_path"])
    for parent in first.parents:
        cand = parent / "derivatives" / "synthetic-truth" / "brain_mask.nii.gz"
        if cand.exists():
            return nib.load(str(cand))
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import index_img, resample_to_img

    ref = index_img(str(first), 0)
    m = resample_to_img(load_mni152_brain_mask(), ref, interpolation="nearest",
                        force_resample=True, copy_header=True)
    return m


def run_stage(manifest, transcripts_dir, index, out_dir, mask_img, delays=DEFAULT_DELAYS,
              aggregation: str = "sum", alphas=DEFAULT_ALPHAS, n_folds: int = 5,
              gap: int | None = None, n_perm: int = 1000, perm_block: int = 10,
              perm_conditions=("raw", "sft"), backend: str = "numpy", device: str | None = None,
              roi_labels=None, baselines=("wordrate",), perm_stop: int | None = 10,
              progress: bool = True) -> dict:
    """Stage 05: brain scores for every (subject, story, run) x condition x seed.

    Writes ``scores.csv`` (whole-brain-mean, ROI and voxel-summary targets), ``voxel_scores.npz``,
    per-run score maps (NIfTI) under ``maps/``, ``group.npz`` (group-mean maps with block-permutation
    p-values and BH-FDR masks for ``perm_conditions``), ``noise_ceiling.csv`` and its map.
    """
    import nibabel as nib
    import pandas as pd
    from pathlib import Path
    from tqdm.auto import tqdm

    from .cache import save_nifti, write_csv, write_npz
    from .data import load_bold, timing_of_row
    from .features import load_activations
    from .transcripts import read_transcript

    out_dir = Path(out_dir)
    (out_dir / "maps").mkdir(parents=True, exist_ok=True)
    gap = max(delays) if gap is None else gap
    mask = np.asarray(mask_img.get_fdata()) > 0
    if not mask.any():
        raise DataError("the brain mask is empty")
    labels = None
    if roi_labels is not None:
        lab_img = nib.load(str(roi_labels)) if isinstance(roi_labels, (str, Path)) else roi_labels
        lab = np.asarray(lab_img.get_fdata())
        if lab.shape != mask.shape:
            raise DataError(f"{roi_labels}: labels grid {lab.shape} != mask grid {mask.shape}")
        labels = lab[mask].astype(int)
    runs = manifest[~manifest["excluded"]].sort_values(["subject", "story", "run"])
    if runs.empty:
        raise DataError("no scan left after exclusions")
    synthetic = bool(manifest["synthetic_bold"].any())
    conds = [(r.condition, r.story, int(r.seed), r.model_tag, r.path)
             for r in index.itertuples()]
    all_paths = {(r.condition, r.story, int(r.seed)): r.all_layers_path
                 for r in index.itertuples() if getattr(r, "all_layers_path", "")}
    layer_rows = []
    rows, voxel_scores = [], {}
    plans: dict[str, dict[str, list]] = {}   # "cond|seed" -> subject -> NullPlans of its runs
    bold_by_run: dict[tuple, list] = {}

    def save_map(vec, name):
        vol = np.zeros(mask.shape, np.float32)
        vol[mask] = np.nan_to_num(vec)
        save_nifti(nib.Nifti1Image(vol, mask_img.affine), out_dir / "maps" / name)

    bar = tqdm(list(runs.iterrows()), desc="brain scores", disable=not progress)
    for _, row in bar:
        sub, story, run = row["subject"], row["story"], int(row["run"])
        timing = timing_of_row(row)
        n_trs = int(row["n_trs"])
        kept = timing.kept_slice(n_trs)
        Y = load_bold(row["bold_path"], mask)
        if len(Y) != n_trs:
            raise DataError(f"{row['bold_path']}: {len(Y)} TRs but the manifest says {n_trs}")
        Y = Y[kept]
        bold_by_run.setdefault((story, run), []).append((sub, Y))
        targets = {"whole_brain_mean": whole_brain_mean(Y)}
        if labels is not None:
            rm, ids = roi_means(Y, labels)
            for j, i in enumerate(ids):
                targets[f"roi-{i}"] = rm[:, [j]]
        tr_file = Path(transcripts_dir) / f"{story}.tsv"
        words = read_transcript(tr_file)
        word_trs = words["tr"].to_numpy(int)
        todo = [(c, s, seed, tag, path) for c, s, seed, tag, path in conds if s == story]
        todo += [(b, story, 0, b, None) for b in baselines]
        for cond, _, seed, tag, path in todo:
            bar.set_postfix_str(f"{sub} {story} run-{run} {cond}")
            if cond == "wordrate":
                X = make_delays(word_rate(word_trs, n_trs), delays)[kept]
            else:
                acts = load_activations(path)
                if len(acts) != len(words):
                    raise DataError(f"{path}: {len(acts)} word activations but {tr_file} has "
                                    f"{len(words)} words")
                X = design_matrix(acts, word_trs, n_trs, kept, delays, aggregation)
            src = f"{row['bold_path']} vs {path or cond}"
            perm = n_perm if cond in perm_conditions else 0
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                vres = fit_score(X, Y, alphas=alphas, n_folds=n_folds, gap=gap, n_perm=perm,
                                 perm_block=perm_block, backend=backend, device=device,
                                 source=src, defer_null=True)
            key = f"{sub}|{story}|{run}|{cond}|{seed}"
            voxel_scores[key] = vres.scores.astype(np.float32)
            save_map(vres.scores, f"{sub}_task-{story}_run-{run}_{cond}_seed-{seed}_r.nii.gz")
            if perm:
                plans.setdefault(f"{cond}|{seed}", {}).setdefault(sub, []).append(vres.null_plan)
            base = dict(subject=sub, story=story, run=run, condition=cond, seed=seed,
                        model_tag=tag, synthetic_bold=synthetic)
            v = vres.scores[vres.valid]
            rows.append(dict(base, target="voxels_mean", brain_score=float(v.mean()),
                             concat_r_diag=float(np.nanmean(vres.concat_r)), p_value=np.nan,
                             n_valid=int(vres.valid.sum()), n_invalid=vres.n_invalid,
                             alpha_median=float(np.nanmedian(vres.alphas)),
                             alpha_edge_fraction=vres.edge_fraction,
                             warnings=" | ".join(str(w.message) for w in caught)))
            if (cond, story, seed) in all_paths:  # layer profile: cheap targets, every layer
                acts_all = load_activations(all_paths[(cond, story, seed)])
                for layer_i, acts_l in enumerate(acts_all):
                    Xl = design_matrix(acts_l, word_trs, n_trs, kept, delays, aggregation)
                    for tname, ty in targets.items():
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            lr = fit_score(Xl, ty, alphas=alphas, n_folds=n_folds, gap=gap)
                        layer_rows.append(dict(base, layer=layer_i, target=tname,
                                               brain_score=float(lr.scores[0])))
            for tname, ty in targets.items():
                tres = fit_score(X, ty, alphas=alphas, n_folds=n_folds, gap=gap,
                                 n_perm=max(n_perm, 0), perm_block=perm_block, backend="numpy",
                                 source=src)
                rows.append(dict(base, target=tname, brain_score=float(tres.scores[0]),
                                 concat_r_diag=float(tres.concat_r[0]),
                                 p_value=float(tres.pvalues[0]) if tres.pvalues is not None
                                 else np.nan, n_valid=1, n_invalid=0,
                                 alpha_median=float(np.median(tres.alphas)),
                                 alpha_edge_fraction=tres.edge_fraction, warnings=""))
    scores = pd.DataFrame(rows)
    write_csv(out_dir / "scores.csv", scores)
    if layer_rows:
        write_csv(out_dir / "layer_scores.csv", pd.DataFrame(layer_rows))
    write_npz(out_dir / "voxel_scores.npz", **voxel_scores)
    save_nifti(mask_img, out_dir / "mask.nii.gz")

    # noise ceiling: leave-one-subject-out ISC per story/run with >= 2 subjects
    nc_rows, nc_maps = [], []
    for (story, run), lst in bold_by_run.items():
        if len(lst) < 2:
            continue
        isc = noise_ceiling([y for _, y in lst])
        wbm = noise_ceiling([whole_brain_mean(y) for _, y in lst])[:, 0]
        for (sub, _), m, w in zip(lst, isc, wbm):
            nc_rows.append(dict(subject=sub, story=story, run=run, isc_whole_brain_mean=float(w),
                                isc_voxels_mean=float(np.nanmean(m)), synthetic_bold=synthetic))
            voxel_scores[f"{sub}|{story}|{run}|noise_ceiling|0"] = m.astype(np.float32)
            nc_maps.append(m)
    nc = pd.DataFrame(nc_rows)
    write_csv(out_dir / "noise_ceiling.csv", nc)
    write_npz(out_dir / "voxel_scores.npz", **voxel_scores)
    group = {}
    if nc_maps:
        group["noise_ceiling"] = np.nanmean(nc_maps, 0).astype(np.float32)
        save_map(group["noise_ceiling"], "group_noise_ceiling_isc.nii.gz")
    # group maps: mean over subjects (runs averaged within subject) + block-permutation FDR
    for c, by_sub in plans.items():
        cond, seed = c.split("|")
        subs = sorted(by_sub)
        obs = np.mean([np.mean([voxel_scores[k] for k in voxel_scores
                                if k.startswith(f"{s}|") and k.endswith(f"|{cond}|{seed}")], 0)
                       for s in subs], 0)
        _, p, n_done = group_permutation_test([by_sub[s] for s in subs], obs, n_perm,
                                              perm_stop=perm_stop)
        group[f"{cond}_seed{seed}_score"] = obs.astype(np.float32)
        group[f"{cond}_seed{seed}_p"] = p
        group[f"{cond}_seed{seed}_fdr05"] = fdr_bh(p, 0.05)
        group[f"{cond}_seed{seed}_n_perm_run"] = n_done
        save_map(obs, f"group_{cond}_seed-{seed}_r.nii.gz")
        save_map(np.where(group[f"{cond}_seed{seed}_fdr05"], obs, 0),
                 f"group_{cond}_seed-{seed}_r_fdr05.nii.gz")
    plans.clear()
    write_npz(out_dir / "group.npz", **group)
    return {"scores": scores, "noise_ceiling": nc, "group": group,
            "voxel_keys": sorted(voxel_scores)}
