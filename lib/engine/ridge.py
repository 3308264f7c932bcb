"""The ridge engine: blocked cross-validation, alpha selection on inner folds, fold scores.

Numpy or torch (CPU or CUDA) through the array shim of :mod:`lib.engine.backend`; no pipeline knowledge.

Rows are TRs. A :class:`Layout` says which run, story and position in the story (TR index after
trimming) each row belongs to, and decides the folds (:func:`blocked_folds`; both live in
:mod:`lib.engine.folds`):

* two or more stories: leave one story out (every run of the held-out story is tested; runs are
  separate scans, so no gap is needed);
* one story (one run, or repeated hearings of it): ``n_folds`` contiguous blocks of story time.
  A block is held out in every repeat at once, so the model never trains on the stimulus segment it
  is tested on, and ``gap`` TRs of story time on each side of the block are dropped from training.

The gap must cover the longest FIR delay (the delayed features of neighbouring TRs overlap) AND the
autocorrelation of BOLD and features: a gap of max(delay) alone leaves a positive held-out r on
pure noise (docs/validity.md, section 1). The default, :func:`default_gap`, is the measured value
that removes that bias; folds come as one :class:`Splitter`.

Inside each outer training set the ridge penalty is chosen per target on ``inner_folds`` inner
folds built the same way (blocked, with the same gap), each standardised on its own fit rows;
validation r is averaged over inner folds. The outer model is refit on the whole outer training set
(standardised on it) and predicts the test rows. Every fit reuses one eigendecomposition for all
alphas: the kernel form ``X X^T`` when TRs < features, the primal ``X^T X`` otherwise.

Targets need no standardisation: features are centred on the fit rows, so an offset in the target
cannot change a prediction, and Pearson r ignores scale. Targets are standardised once over all
rows only for float32 accuracy (a per-target affine map cannot change any fold's r).

Brain score of a run = mean over folds of the per-fold Pearson r on that run's held-out rows. The r
of concatenated held-out predictions (training mean added back) is kept as a diagnostic only.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from .backend import (Backend, np_pearson, pearson_cols, r2_cols, zscore_on,  # noqa: F401
                      zscore_rows)
from .docs import fill_doc
from .folds import (AUTOCORR_MARGIN_S, EngineError, Layout, Splitter,  # noqa: F401
                    aggregate_runs, blocked_folds, default_gap, position_blocks, run_masks,
                    score_masks, split_folds, story_group_folds)

DEFAULT_ALPHAS = np.logspace(-1, 8, 10)
DEFAULT_DELAYS = (1, 2, 3, 4, 5)
ALPHA_TIE = 1e-4   # validation-r ties (float noise) go to the larger penalty


# --------------------------------------------------------------------------- decompositions
@dataclass
class Decomp:
    """Spectral ridge on one fit set: prediction(alpha) = (A / (lam + alpha)) @ (Bm @ Y[fit])."""
    fit: np.ndarray
    pred_rows: np.ndarray
    lam: object
    A: object     # (n_pred, m): the rows to predict, projected
    Bm: object    # (m, n_fit): maps fit targets into the eigenbasis (primal form: formed lazily)
    A_parts: list | None = None   # per column group: its share of A (banded ridge splits)
    Xf: object = None             # primal form: the standardised fit rows and the eigenvectors,
    V: object = None              # while Bm = (Xf V)^T is not formed
    projected: int = 0            # targets projected without Bm so far

    def project(self, B: Backend, Y):
        """Bm @ Y[fit]. In the primal form Bm costs an (n_fit, p) x (p, p) product to form;
        V^T (Xf^T Y) gives the same numbers without it, cheaper as long as the targets projected
        stay fewer than the fit rows (response matrices: 2 x 200 targets on ~3,000 rows). Past
        that, Bm is formed once and kept (it then pays for itself)."""
        Yf = Y[B.idx(self.fit)]
        if self.Bm is None and self.projected + Yf.shape[1] <= len(self.fit):
            self.projected += Yf.shape[1]
            return self.V.T @ (self.Xf.T @ Yf)
        return self.basis() @ Yf

    def basis(self):
        """Bm, formed on first need."""
        if self.Bm is None:
            self.Bm, self.Xf = (self.Xf @ self.V).T, None
        return self.Bm

    def predict(self, alpha: float, BY):
        return (self.A / (self.lam + float(alpha))) @ BY

    def hat(self, alpha: float):
        """(n_pred, n_fit) matrix mapping fit targets to predictions."""
        return (self.A / (self.lam + float(alpha))) @ self.basis()


def decompose(B: Backend, X, fit: np.ndarray, pred_rows: np.ndarray, col_scale=None,
              groups: list | None = None) -> Decomp:
    """Standardise X on ``fit`` rows (then multiply column j by ``col_scale[j]``: banded ridge's
    band weights), then one eigendecomposition serving every alpha. With ``groups`` (column
    index arrays) the prediction is also kept split by group."""
    Xf, Xp = zscore_rows(B, X, fit, pred_rows)
    if col_scale is not None:
        w = B.asarray(col_scale)
        Xf, Xp = Xf * w, Xp * w
    n, p = Xf.shape
    if n <= p:      # kernel form: K = Xf Xf^T = U diag(lam) U^T
        lam, U = B.eigh(Xf @ Xf.T)
        parts = [(Xp[:, B.idx(g)] @ Xf[:, B.idx(g)].T) @ U for g in groups] if groups else None
        return Decomp(fit, pred_rows, B.xp.clip(lam, 0, None), (Xp @ Xf.T) @ U, U.T, parts)
    lam, V = B.eigh(Xf.T @ Xf)   # primal: Xf^T Xf = V diag(lam) V^T
    parts = [Xp[:, B.idx(g)] @ V[B.idx(g)] for g in groups] if groups else None
    return Decomp(fit, pred_rows, B.xp.clip(lam, 0, None), Xp @ V, None, parts, Xf=Xf, V=V)


@dataclass
class FoldDesign:
    train: np.ndarray
    test: np.ndarray
    inner: list[Decomp]
    outer: Decomp


@dataclass
class Design:
    """Everything about a fit that depends on the features only: folds and decompositions.
    Computed once, then applied to any number of target sets (subjects who heard the same
    stories with the same TRs share it)."""
    B: Backend
    layout: Layout
    folds: list[FoldDesign]
    alphas: np.ndarray
    gap: int
    n_features: int
    scheme: str
    score_blocks: int = 0     # > 1: a held-out story's r is the mean over this many blocks
    band_weights: np.ndarray | None = None    # banded ridge: the weighting this design scales by

    @property
    def n_runs(self) -> int:
        return int(self.layout.run.max()) + 1


def prepare(X: np.ndarray, layout: Layout | None, cv: Splitter, *, alphas=DEFAULT_ALPHAS,
            backend: str = "numpy", device: str | None = None, dtype: str = "float32",
            source: str = "", col_scale=None, groups=None) -> Design:
    """Folds and one eigendecomposition per fit, for features that already carry their delays.

    Parameters
    ----------
    X : array (n_trs, n_features)
        The delayed features.
    layout : Layout or None
        Which run, story and story position each row is (None: one run named by the features'
        content).
    cv : Splitter
        The outer and inner folds and the gap (:class:`lib.engine.folds.Splitter`;
        ``Splitter.for_delays(delays, tr)`` derives the gap from the delays at the TR).
    alphas : array
        The ridge penalties searched on the inner folds.
    backend, device, dtype : str
        ``numpy`` or ``torch`` (CPU or CUDA, :mod:`lib.engine.backend`), and the precision.
    source : str
        Named in error messages (the subject and condition).
    col_scale, groups : array, list of arrays, optional
        Band weights and bands, for banded ridge (:mod:`lib.engine.partition`).

    Returns
    -------
    Design
        Reusable for any number of target sets (:func:`score`, :func:`heldout_predictions`).

    Raises
    ------
    EngineError
        When the layout does not match ``X``, every feature is zero, or the folds cannot be cut.
    """
    where = f" ({source})" if source else ""
    X = np.asarray(X, np.float32)
    layout = layout or Layout.of_content(X)
    if len(layout) != len(X):
        raise EngineError(f"layout has {len(layout)} rows but features have {len(X)}{where}")
    if not isinstance(cv, Splitter):
        raise EngineError(f"cv must be a Splitter (e.g. Splitter.for_delays(delays, tr)), got "
                          f"{type(cv).__name__}{where}")
    if not np.any(X):
        raise EngineError(f"all features are zero{where}")
    B = Backend(backend, device, dtype)
    Xb = B.asarray(X)
    outer = cv.outer(layout)
    loso = len(np.unique(layout.story)) > 1
    blocks = int(cv.score_blocks) if loso and cv.score_blocks and cv.score_blocks > 1 else 0
    scheme = ("leave-one-story-out" + (f", r per {blocks} blocks of each held-out story"
                                       if blocks else "") if loso else
              f"{len(outer)} contiguous blocks of story time, gap {cv.gap} TRs")
    fds = []
    try:
        for train, test in outer:
            inner = [decompose(B, Xb, fit, val, col_scale) for fit, val in cv.inner(layout, train)]
            fds.append(FoldDesign(train, test, inner,
                                  decompose(B, Xb, train, test, col_scale, groups)))
    except EngineError as e:
        raise EngineError(f"{e}{where}") from None
    return Design(B, layout, fds, np.sort(np.asarray(alphas, np.float64)), int(cv.gap),
                  X.shape[1], scheme, blocks)


# --------------------------------------------------------------------------- scoring
@dataclass
class EncodingResult:
    """Per-target scores; arrays are numpy. ``valid`` marks targets that were fitted."""
    scores: np.ndarray            # (t,) the brain score: runs averaged within story, stories equally
    run_scores: np.ndarray        # (n_runs, t) mean over folds of the per-fold r of each run
    fold_scores: np.ndarray       # (n_folds, n_runs, t) NaN where a fold does not test a run
    alphas: np.ndarray            # (n_folds, t) chosen alpha per fold
    valid: np.ndarray             # (t,) bool
    concat_r: np.ndarray          # (t,) diagnostic: r of concatenated held-out predictions
    n_invalid: int = 0
    edge_fraction: float = 0.0    # share of alpha choices at a grid edge, better than the next
    edge: np.ndarray | None = None    # (n_folds, t) those choices
    null: np.ndarray | None = None       # (n_perm, t) permutation null of ``scores``
    pvalues: np.ndarray | None = None
    best: np.ndarray | None = None       # (n_folds, t) index of each fold's alpha (-1: not fit)
    info: dict = field(default_factory=dict)


def inner_scores(B: Backend, fd: FoldDesign, alphas, Y, metric: str = "r"):
    """(n_alphas, t) mean validation score (``r``, or ``r2`` for variance partitioning, where
    the prediction's scale matters) over the inner folds of one outer fold."""
    rs = 0
    for dec in fd.inner:
        rs = rs + alpha_scores(B, dec, alphas, dec.project(B, Y), Y[B.idx(dec.pred_rows)],
                               metric)
    return rs / len(fd.inner)


def alpha_scores(B: Backend, dec: Decomp, alphas, BY, yv, metric: str = "r"):
    """(n_alphas, t) validation ``r`` (or ``r2``, :func:`r2_cols`) of ``dec``'s predictions
    of ``yv`` for every alpha; NaN (a target with NaN) scores -1, a constant target r 0.

    The same numbers as :func:`pearson_cols` of each alpha's prediction, with the work that
    does not depend on alpha done once: A's rows are centred first, so every prediction comes
    out centred (its mean over the validation rows is A's row mean times the same weights);
    y is centred and its norm taken once; and the cross term sum_i p_i y_i of all alphas is one
    small product, (1 / (lam + alpha)) @ ((A_c^T y_c) * BY). Each alpha then costs its
    prediction and one pass for sum_i p_i^2, about a third of the passes of centring and
    reducing every prediction afresh (measured: 1.8x faster on 8,735 targets,
    docs/benchmarks.md)."""
    xp = B.xp
    Ac = dec.A - B.mean0(dec.A, keep=True)
    yc = yv - B.mean0(yv, keep=True)
    yy = (yc * yc).sum(0)
    inv = xp.stack([1.0 / (dec.lam + float(a)) for a in alphas])          # (n_alphas, m)
    cross = inv @ ((Ac.T @ yc) * BY)                                       # (n_alphas, t)
    pp = xp.stack([(((Ac * w) @ BY) ** 2).sum(0) for w in inv])
    if metric == "r":
        out = cross / ((pp * yy) ** 0.5 + 1e-12)
    else:
        out = 1 - (yy - 2 * cross + pp) / (yy + 1e-12)
    return xp.nan_to_num(out, nan=-1.0)


def _select_alpha(B: Backend, fd: FoldDesign, alphas, Y, metric: str = "r"):
    """Per target: index of the alpha with the best mean validation r over the inner folds
    (ties within ALPHA_TIE go to the larger alpha), and whether that choice is a real edge: the
    edge alpha beats its neighbour by more than ALPHA_TIE, so the best penalty may lie outside
    the grid. (A plateau at the top is no edge: large penalties give proportional predictions
    and equal r.)"""
    xp = B.xp
    rs = inner_scores(B, fd, alphas, Y, metric)
    ok = rs >= xp.amax(rs, 0) - ALPHA_TIE
    flipped = xp.flip(ok, (0,)).to(xp.uint8) if B.name == "torch" else ok[::-1]
    best = B.to_numpy(len(alphas) - 1 - flipped.argmax(0))
    if len(alphas) < 2:
        return best, np.zeros(len(best), bool)
    r = B.to_numpy(rs)
    edge = ((best == 0) & (r[0] > r[1] + ALPHA_TIE)) | \
        ((best == len(alphas) - 1) & (r[-1] > r[-2] + ALPHA_TIE))
    return best, edge


def _predict_grouped(B: Backend, dec: Decomp, alphas, best: np.ndarray, BY):
    pred = B.zeros((len(dec.pred_rows), BY.shape[1]))
    for a_i in np.unique(best):
        sel = B.idx(np.flatnonzero(best == a_i))
        pred[:, sel] = dec.predict(alphas[a_i], BY[:, sel])
    return pred


@fill_doc
def score(design: Design, Y: np.ndarray, batch_targets: int = 20000, source: str = "",
          select: str = "r") -> EncodingResult:
    """Cross-validated brain scores of a design's features for targets.

    Parameters
    ----------
    %(design_Y)s
    select : str
        The inner-fold score that picks each target's alpha: ``r`` or ``r2``.

    Returns
    -------
    EncodingResult
        Per-target brain scores (mean over folds of the per-fold r; runs within a story
        averaged, stories equally), run and fold scores, each fold's chosen alphas and their
        indices (``best``: :func:`lib.engine.inference.null_plan` builds the permutation null of
        these scores from them).
    """
    # the hot loop (folds x target batches) stays in one place, where its memory bound is visible
    where = f" ({source})" if source else ""
    D, B = design, design.B
    xp = B.xp
    Y = np.asarray(Y, np.float32)
    if len(Y) != len(D.layout):
        raise EngineError(f"TR mismatch: features have {len(D.layout)} TRs but BOLD has "
                          f"{len(Y)} TRs{where}")
    if Y.ndim != 2 or Y.shape[1] == 0:
        raise EngineError(f"no targets (empty mask?){where}")
    t = Y.shape[1]
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(Y).all(0) & (np.ptp(Y, axis=0) > 1e-6)
    if not valid.any():
        raise EngineError(f"every target is constant or NaN{where}")
    vidx = np.flatnonzero(valid)
    nf, nr = len(D.folds), D.n_runs
    fold_scores = np.full((nf, nr, t), np.nan, np.float32)
    fold_alpha = np.full((nf, t), np.nan, np.float64)
    fold_best = np.full((nf, t), -1, np.int64)
    fold_edge = np.zeros((nf, t), bool)
    cs = {k: np.zeros(t, np.float64) for k in ("p", "pp", "y", "yy", "py")}
    late_invalid = np.zeros(t, bool)
    for s in range(0, len(vidx), batch_targets):
        cols = vidx[s:s + batch_targets]
        Yb = standardised(B, Y, cols)
        for f, fd in enumerate(D.folds):
            sd = B.to_numpy(Yb[B.idx(fd.train)].std(0))
            late_invalid[cols[sd <= 1e-6]] = True
            best, fold_edge[f, cols] = _select_alpha(B, fd, D.alphas, Yb, select)
            fold_alpha[f, cols] = D.alphas[best]
            fold_best[f, cols] = best
            BYo = fd.outer.project(B, Yb)
            pred = _predict_grouped(B, fd.outer, D.alphas, best, BYo)
            yt = Yb[B.idx(fd.test)]
            for run, ms in score_masks(D.layout, fd.test, D.score_blocks).items():
                fold_scores[f, run, cols] = np.mean(
                    [B.to_numpy(pearson_cols(B, pred[B.idx(m)], yt[B.idx(m)])) for m in ms], 0)
            # diagnostic: concatenated predictions with the training mean added back
            full = pred + B.mean0(Yb[B.idx(fd.train)], keep=True)
            for k, v in (("p", full.sum(0)), ("pp", (full * full).sum(0)), ("y", yt.sum(0)),
                         ("yy", (yt * yt).sum(0)), ("py", (full * yt).sum(0))):
                cs[k][cols] += B.to_numpy(v)
    valid &= ~late_invalid
    n_invalid = int((~valid).sum())
    if n_invalid:
        warnings.warn(f"{n_invalid} of {t} targets are constant or contain NaN and are left out "
                      f"of fitting{where}; their scores are NaN", stacklevel=2)
    fold_scores[..., ~valid] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        run_scores = np.nanmean(fold_scores, 0)
    scores = aggregate_runs(run_scores, D.layout.run_story())
    concat_r = _concat_r(cs, sum(len(fd.test) for fd in D.folds))
    concat_r[~valid] = np.nan
    edge = float(fold_edge[:, valid].mean()) if valid.any() else 0.0
    if edge > 0.2 and len(D.alphas) > 2:
        warnings.warn(f"{edge:.0%} of alpha choices are at the edge of the grid "
                      f"[{D.alphas[0]:g}, {D.alphas[-1]:g}] and beat the next penalty: the best "
                      f"may lie outside it{where}", stacklevel=2)
    res = EncodingResult(scores, run_scores, fold_scores, fold_alpha, valid, concat_r, n_invalid,
                         edge, fold_edge, info=dict(n_folds=nf, gap=D.gap, scheme=D.scheme,
                                         backend=B.name, n_trs=len(Y),
                                         n_features=D.n_features,
                                         inner_folds=len(D.folds[0].inner)))
    res.best = fold_best
    return res


@fill_doc
def heldout_predictions(design: Design, Y: np.ndarray, batch_targets: int = 20000,
                        source: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The held-out predictions of every outer fold, stacked in fold order.

    Predictions are of the targets standardised over all rows (a per-target affine map:
    correlations and their differences are unchanged).

    Parameters
    ----------
    %(design_Y)s

    Returns
    -------
    rows : array of int
        The held-out rows, fold after fold.
    predictions : array (len(rows), n_targets), float32
        Their predictions.
    alphas : array (n_folds, n_targets)
        The alpha chosen for each target in each fold.

    Raises
    ------
    EngineError
        When a target is constant or not finite.
    """
    D, B = design, design.B
    Y = np.asarray(Y, np.float32)
    where = f" ({source})" if source else ""
    if len(Y) != len(D.layout):
        raise EngineError(f"TR mismatch: features have {len(D.layout)} TRs but the responses "
                          f"have {len(Y)} TRs{where}")
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(Y).all(0) & (np.ptp(Y, axis=0) > 1e-6)
    if not ok.all():
        raise EngineError(f"{int((~ok).sum())} targets are constant or hold NaN{where}")
    rows = np.concatenate([fd.test for fd in D.folds])
    pred = np.zeros((len(rows), Y.shape[1]), np.float32)
    alphas = np.zeros((len(D.folds), Y.shape[1]))
    for s in range(0, Y.shape[1], batch_targets):
        cols = np.arange(s, min(s + batch_targets, Y.shape[1]))
        Yb = standardised(B, Y, cols)
        at = 0
        for f, fd in enumerate(D.folds):
            best, _ = _select_alpha(B, fd, D.alphas, Yb)
            alphas[f, cols] = D.alphas[best]
            p = _predict_grouped(B, fd.outer, D.alphas, best, fd.outer.project(B, Yb))
            pred[at:at + len(fd.test), cols] = B.to_numpy(p)
            at += len(fd.test)
    return rows, pred, alphas


def standardised(B: Backend, Y: np.ndarray, cols: np.ndarray):
    """Columns ``cols`` of Y standardised over ALL rows (accuracy only: predictions and r are
    invariant to a per-target affine map, see the module docstring). Mean and sd are summed in
    float64 without a float64 copy of the batch (that copy and its temporaries were the peak of
    a 50k-target fit); the map itself is applied in place in float32."""
    contiguous = cols[-1] - cols[0] + 1 == len(cols)
    y = np.array(Y[:, cols[0]:cols[-1] + 1] if contiguous else Y[:, cols], np.float32)
    n = len(y)
    mu = np.add.reduce(y, 0, dtype=np.float64) / n
    var = np.einsum("ij,ij->j", y, y, dtype=np.float64) / n - mu * mu
    sd = np.sqrt(np.clip(var, 0, None))
    y -= mu.astype(np.float32)
    y -= (np.add.reduce(y, 0, dtype=np.float64) / n).astype(np.float32)  # mu's float32 rounding
    y /= np.where(sd > 0, sd, 1.0).astype(np.float32)
    return B.asarray(y)


def _concat_r(cs: dict, m: int) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = cs["py"] - cs["p"] * cs["y"] / m
        return (cov / np.sqrt((cs["pp"] - cs["p"] ** 2 / m) * (cs["yy"] - cs["y"] ** 2 / m))
                ).astype(np.float32)


def fit_score(X: np.ndarray, Y: np.ndarray, layout: Layout | None, cv: Splitter, *,
              alphas=DEFAULT_ALPHAS, backend: str = "numpy", device: str | None = None,
              dtype: str = "float32", batch_targets: int = 20000, source: str = "",
              select: str = "r") -> EncodingResult:
    """Cross-validated ridge brain scores of features ``X`` for targets ``Y``: :func:`prepare`
    then :func:`score`.

    Parameters
    ----------
    X : array (n_trs, n_features)
        The delayed features.
    Y : array (n_trs, n_targets)
        The responses (BOLD of voxels, ROI means, components).
    layout, cv, alphas, backend, device, dtype, source
        As in :func:`prepare`.
    batch_targets : int
        Targets scored at once (memory).
    select : str
        The inner-fold score that picks each target's alpha: ``r`` or ``r2``.

    Returns
    -------
    EncodingResult
        Per-target brain scores (mean per-fold r, runs within a story averaged, stories
        equally), run and fold scores, chosen alphas.

    Raises
    ------
    EngineError
        When ``X`` and ``Y`` differ in TRs, or as :func:`prepare`.
    """
    if len(X) != len(Y):
        raise EngineError(f"TR mismatch: features have {len(X)} TRs but BOLD has {len(Y)} TRs"
                          + (f" ({source})" if source else ""))
    design = prepare(X, layout, cv, alphas=alphas, backend=backend, device=device, dtype=dtype,
                     source=source)
    return score(design, Y, batch_targets=batch_targets, source=source,
                 select=select)

