"""Banded ridge with this project's folds, and variance partitioning between feature spaces.

Several feature spaces (bands) are fitted jointly by random search over the bands' relative
weights w (himalaya's ``MultipleKernelRidgeCV(solver="random_search")`` scheme -- the one-hot
corners, the uniform weighting, Dirichlet draws with concentrations 0.1 and 1 in turn -- made
nested: :func:`band_weights` holds every weighting of each reduced fit, and the reduced fits of a
partition search exactly those of the joint fit's designs, :func:`partition_fits`): each band is
standardised, scaled by sqrt(w_b), and the weighted design goes through the single-space engine's
own folds, inner folds, standardisation and validation-r selection
(:func:`lib.engine.ridge.prepare`, :func:`lib.engine.ridge.inner_scores`); each target keeps the
(weighting, alpha) with the best inner validation score. Written on the engine rather than
calling himalaya's estimator because himalaya's cross-validation works on precomputed kernels
and cannot re-standardise each inner fit (how much that changes r: docs/validity.md, 5f); built
on the engine, one band *is* the engine. himalaya still provides the product-measure split
(``r2_score_split``) and is the reference in the tests.

Two measures (``measure``): ``rsq``, what :func:`partition_fits` and the pipeline use, the
signed square r|r| of each run's held-out r with r selection (scale-free: shrunk predictions
cost nothing; its split gives each band |r| times its share of r); ``r2``, held-out R^2 with
R^2 selection, split by himalaya's product measure, which shrinks heavily on one story of smooth
BOLD (docs/validity.md, 5f). Runs are then averaged like brain scores. Partition of spaces S:

* ``joint``: the measure of all spaces together; ``split:<s>``: each space's share;
* ``unique:<s>`` = R^2(S) - R^2(S without s): what s adds that nothing else explains;
* ``shared`` = R^2(S) - sum of the uniques (with two spaces, the classic set-theoretic
  decomposition).

Selection noise biases unique shares downwards (docs/validity.md, 5f), so a space's unique
share is tested against its conditional placebo (:func:`placebo_band_designs`) across subjects.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np

from .folds import Layout, Splitter, aggregate_runs, blocked_folds, score_masks
from .ridge import ALPHA_TIE, DEFAULT_ALPHAS, inner_scores, pearson_cols, prepare, standardised


@dataclass
class BandedResult:
    r2: np.ndarray            # (t,) joint R^2, aggregated like a brain score
    r: np.ndarray             # (t,) joint r
    split: np.ndarray         # (n_bands, t) product-measure split of r2
    run_r2: np.ndarray        # (n_runs, t)
    weights: np.ndarray       # (n_folds, n_bands, t) chosen band weights
    alphas: np.ndarray        # (n_folds, t) chosen alpha
    choice: np.ndarray        # (n_folds, t) chosen (weighting, alpha) as one index
    edge: float               # share of choices at an alpha edge of the grid
    designs: list | None = None   # one lib.engine.ridge.Design per weighting (for the null)
    valid: np.ndarray | None = None
    run_split: np.ndarray | None = None   # (n_bands, n_runs, t)


def band_weights(n_bands: int, n_iter: int = 20, seed: int = 0) -> np.ndarray:
    """(n_candidates, n_bands) nested weightings: every weighting of an (n_bands - 1)-band fit,
    embedded with a zero for the left-out band (for each band in turn; the one-hot corners at the
    bottom), then this level's own ``n_iter``: the uniform weighting and Dirichlet draws
    (concentrations 0.1 and 1 in turn). A fit without band b therefore searches exactly the
    candidates of the full fit with w_b = 0: the full search contains the reduced one, so a band
    that adds nothing costs nothing (before nesting, a redundant band got a unique R^2 of -0.009
    to -0.020, docs/validity.md). Candidates with fewer bands come first, so ties in validation
    go to the simpler model."""
    if n_bands == 1:
        return np.ones((1, 1))
    sub = band_weights(n_bands - 1, n_iter, seed)
    rows = []
    for drop in range(n_bands):
        E = np.zeros((len(sub), n_bands))
        E[:, [b for b in range(n_bands) if b != drop]] = sub
        rows += list(E)
    rng = np.random.default_rng([seed, n_bands])
    rows += [np.full(n_bands, 1.0 / n_bands)] + [
        rng.dirichlet(np.full(n_bands, (0.1, 1.0)[i % 2])) for i in range(max(0, n_iter - 1))]
    # near-duplicates (a Dirichlet(0.1) draw next to a corner) would only cost time
    unique = {tuple(np.round(w, 3)): w for w in reversed(rows)}     # the first occurrence wins
    kept = [unique[k] for k in dict.fromkeys(tuple(np.round(w, 3)) for w in rows)]
    kept.sort(key=lambda w: int(np.sum(w > 5e-4)))                  # stable: fewer bands first
    return np.array(kept)


def nested(designs: list, bands) -> list:
    """The designs of the full fit whose weightings are zero outside ``bands`` (indices): the
    candidates of the fit of those bands alone (:func:`band_weights` nests them)."""
    keep = np.zeros(len(designs[0].band_weights), bool)
    keep[list(bands)] = True
    return [D for D in designs if not np.any(D.band_weights[~keep] > 0)]


def _r2(y, p):
    """R^2 of test-centred predictions vs test-centred y, (n, t)."""
    y = y - y.mean(0, keepdims=True)
    p = p - p.mean(0, keepdims=True)
    return 1 - ((y - p) ** 2).sum(0) / np.maximum((y * y).sum(0), 1e-12)


def _r_shares(y, parts):
    """Each band's share of the joint prediction's r, (b, t): cov(part_b, y) / (sd(joint) sd(y));
    the shares add up to r (times |r|, they split r|r|)."""
    y = y - y.mean(0, keepdims=True)
    parts = parts - parts.mean(1, keepdims=True)
    joint = parts.sum(0)
    sj, sy = np.sqrt((joint ** 2).sum(0)), np.sqrt((y ** 2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num((parts * y[None]).sum(1) / (sj * sy))


def _split_r2(y, parts):
    """himalaya's product measure on test-centred data: share of each band, (b, t)."""
    from himalaya.scoring import r2_score_split

    y = y - y.mean(0, keepdims=True)
    parts = parts - parts.mean(1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(r2_score_split(y, parts), np.float64)


def banded_prepare(Xs: list[np.ndarray], layout: Layout | None, cv: Splitter, *,
                   alphas=DEFAULT_ALPHAS, n_iter: int = 20, seed: int = 0,
                   backend: str = "numpy", device=None, reuse: tuple | None = None) -> list:
    """Banded ridge designs: one :class:`lib.engine.ridge.Design` per band weighting, shared by
    every subject with the same features and TRs.

    Parameters
    ----------
    Xs : list of array (n_trs, p_b)
        One delayed design per space (band).
    layout, cv
        As in :func:`lib.engine.ridge.prepare`.
    alphas : array
        Ridge penalties.
    n_iter, seed : int
        Weightings drawn per level (:func:`band_weights`) and their seed.
    backend, device : str
        As in :func:`lib.engine.ridge.prepare`.
    reuse : (designs, b), optional
        Designs of the same weightings where only band b's features differ: a weighting with
        w_b = 0 never sees band b, so its design is taken as it is.

    Returns
    -------
    list of Design
        One per weighting (``band_weights`` set).
    """
    X = np.hstack([np.asarray(x, np.float32) for x in Xs])
    edges = np.cumsum([0] + [x.shape[1] for x in Xs])
    groups = [np.arange(a, b) for a, b in zip(edges[:-1], edges[1:])]
    W = band_weights(len(Xs), n_iter, seed)
    designs = []
    for i, w in enumerate(W):
        if reuse is not None and w[reuse[1]] == 0:
            designs.append(reuse[0][i])
            continue
        D = prepare(X, layout, cv, alphas=alphas, backend=backend, device=device, groups=groups,
                    col_scale=np.concatenate([np.full(len(g), np.sqrt(w_b))
                                              for g, w_b in zip(groups, w)]))
        designs.append(replace(D, band_weights=w))
    return designs


def banded_fit(Xs: list[np.ndarray], Y: np.ndarray, layout: Layout | None, cv: Splitter, *,
               alphas=DEFAULT_ALPHAS, n_iter: int = 20, seed: int = 0, backend: str = "numpy",
               device=None,
               batch_targets: int = 20000, keep_designs: bool = False, select: str = "r2"
               ) -> BandedResult:
    """Banded ridge over ``Xs`` (one (n, p_b) delayed design per space) for targets ``Y``;
    hyperparameters chosen by inner-fold ``select`` score (``r2`` or ``r``)."""
    designs = banded_prepare(Xs, layout, cv, alphas=alphas, n_iter=n_iter, seed=seed,
                             backend=backend, device=device)
    res = banded_score(designs, Y, batch_targets, select)
    if not keep_designs:
        res.designs = None
    return res


def banded_score(designs: list, Y: np.ndarray, batch_targets: int = 20000,
                 select: str = "r2", pooled: bool = False, measure: str = "r2",
                 memo: dict | None = None) -> BandedResult:
    """Score targets ``Y`` with prepared banded designs (:func:`banded_prepare`): each target's
    (weighting, alpha) by its inner-fold ``select`` score, or with ``pooled`` one weighting per
    outer fold for all targets (:func:`_choose_pooled`; docs/validity.md measures both).
    ``measure``: what ``r2`` and ``split`` hold -- held-out R^2 and its product-measure split, or
    ``rsq``: the signed square r|r| of the held-out r (averaged over folds per run, like a brain
    score), split as |r| times each band's share of r (:func:`_r_shares`), which no shrinkage
    of the predictions can change. ``memo``: a dict shared by the scorings of one ``Y``
    (:func:`partition_scores`, :func:`placebo_scores`), where a design's inner-fold scores are
    kept, so that a design that several fits search is scored once."""
    D0 = designs[0]
    W = np.stack([D.band_weights for D in designs])
    B, lay, al = D0.B, D0.layout, D0.alphas
    n_b, t, nf = W.shape[1], Y.shape[1], len(D0.folds)
    nr = D0.n_runs
    fold_r2 = np.full((nf, nr, t), np.nan)
    fold_r = np.full((nf, nr, t), np.nan)
    fold_split = np.full((nf, n_b, nr, t), np.nan)
    choice = np.zeros((nf, t), np.int64)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(Y).all(0) & (np.ptp(Y, axis=0) > 1e-6)
    cols_all = np.flatnonzero(valid)
    for s in range(0, len(cols_all), batch_targets):
        cols = cols_all[s:s + batch_targets]
        Yb = standardised(B, Y, cols)
        for f in range(nf):
            rs = np.stack([_inner(D, f, s, Yb, select, memo) for D in designs])
            best = (_choose_pooled if pooled else _choose)(rs)   # index c * n_alpha + a
            choice[f, cols] = best
            test = D0.folds[f].test
            parts = np.zeros((n_b, len(test), len(cols)))
            for g in np.unique(best):
                c, a = divmod(int(g), len(al))
                sel = np.flatnonzero(best == g)
                out = designs[c].folds[f].outer
                BY = out.project(B, Yb[:, B.idx(sel)])
                for b in range(n_b):
                    parts[b][:, sel] = B.to_numpy(
                        (out.A_parts[b] / (out.lam + float(al[a]))) @ BY)
            yt = B.to_numpy(Yb[B.idx(test)]).astype(np.float64)
            for run, ms in score_masks(lay, test, D0.score_blocks).items():
                fold_r[f, run, cols], fold_r2[f, run, cols], split = _run_measures(
                    B, yt, parts, ms, measure)
                fold_split[f, :, run, cols] = split.T
    story = lay.run_story()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        run_r2, run_r, run_split = (np.nanmean(a, 0) for a in (fold_r2, fold_r, fold_split))
    if measure == "rsq":
        run_r2, run_split = run_r * np.abs(run_r), np.abs(run_r)[None] * run_split
    c_idx, a_idx = np.divmod(choice, len(al))
    weights = np.moveaxis(W[c_idx], -1, 1)                       # (folds, bands, t)
    edge = float(np.mean((a_idx == 0) | (a_idx == len(al) - 1)))
    return BandedResult(aggregate_runs(run_r2, story), aggregate_runs(run_r, story),
                        np.stack([aggregate_runs(x, story) for x in run_split]), run_r2,
                        weights, al[a_idx], choice, edge, designs, valid, run_split)


def _inner(D, f: int, s: int, Yb, select: str, memo: dict | None) -> np.ndarray:
    """:func:`inner_scores` of design ``D``'s outer fold ``f`` for the target batch starting at
    column ``s``, kept in ``memo`` (the design rides along in the value, so its id stays its own
    while the memo lives)."""
    key = (id(D), f, s, select)
    if memo is not None and key in memo:
        return memo[key][1]
    rs = D.B.to_numpy(inner_scores(D.B, D.folds[f], D.alphas, Yb, select))
    if memo is not None:
        memo[key] = (D, rs)
    return rs


def _run_measures(B, yt: np.ndarray, parts: np.ndarray, blocks: list, measure: str):
    """One run's held-out r, R^2 (NaN for ``rsq``) and split (b, t), each the mean over the
    run's scoring blocks (:func:`lib.engine.folds.score_masks`): ``rsq`` splits r into each
    band's share (squared per run by the caller), ``r2`` is split by the product measure."""
    r, r2, split = [], [], []
    for m in blocks:
        joint = parts[:, m].sum(0)
        r.append(B.to_numpy(pearson_cols(B, B.asarray(joint), B.asarray(yt[m]))))
        if measure == "rsq":
            r2.append(np.full(joint.shape[1], np.nan))
            split.append(_r_shares(yt[m], parts[:, m]))
        else:
            r2.append(_r2(yt[m], joint))
            split.append(_split_r2(yt[m], parts[:, m]))
    return np.mean(r, 0), np.mean(r2, 0), np.mean(split, 0)


def _choose_pooled(rs: np.ndarray) -> np.ndarray:
    """One weighting for every target (the best mean over targets of each target's best
    validation score; ties to the earlier), then each target's alpha within it."""
    n_c, n_a, t = rs.shape
    tot = rs.max(1).mean(1)                                         # (c,)
    c = int(np.flatnonzero(tot >= tot.max() - ALPHA_TIE)[0])
    return c * n_a + _choose(rs[c:c + 1])


def _choose(rs: np.ndarray) -> np.ndarray:
    """Per target, the (weighting, alpha) with the best validation score: ties within ALPHA_TIE
    go to the earlier weighting, then to the larger alpha (as in the single-space engine)."""
    n_c, n_a, t = rs.shape
    ok = rs >= rs.reshape(-1, t).max(0)[None, None] - ALPHA_TIE
    c = ok.any(1).argmax(0)                                       # first weighting with a tie
    a = n_a - 1 - ok[c, ::-1, np.arange(t)].argmax(1)             # its largest tied alpha
    return c * n_a + a


def partition(spaces: list[str], fits: dict[tuple, BandedResult]) -> dict[str, np.ndarray]:
    """Unique and shared R^2 from the joint fit and the leave-one-space-out fits.

    ``fits`` maps a tuple of space names (in the order of ``spaces``) to its BandedResult; it must
    hold the joint fit and every fit without one space. Returns ``joint``, ``shared`` and
    ``unique:<space>`` / ``split:<space>`` arrays (per target)."""
    return partition_measures(spaces, {k: f.r2 for k, f in fits.items()},
                              fits[tuple(spaces)].split)


def partition_measures(spaces: list[str], r2: dict[tuple, np.ndarray], split: np.ndarray
                       ) -> dict[str, np.ndarray]:
    """The partition's measures (unique, shared, each space's share) from the fits' measures.

    Parameters
    ----------
    spaces : list of str
        The spaces' names.
    r2 : dict
        Each subset of :func:`needed_fits` to its measure (arrays of any shape).
    split : array (n_spaces, ...)
        The joint fit's share of each space.

    Returns
    -------
    dict
        ``{measure name: array}``.
    """
    full = tuple(spaces)
    out = {"joint": r2[full]}
    uniq = 0
    for i, s in enumerate(spaces):
        u = r2[full] - r2[tuple(x for x in spaces if x != s)]
        out[f"unique:{s}"] = u
        out[f"split:{s}"] = split[i]
        uniq = uniq + u
    out["shared"] = r2[full] - uniq
    return out


#: how partitions are scored unless a caller says otherwise (docs/validity.md 5f): r selection,
#: one band weighting per outer fold pooled over the targets, the signed squared held-out r (on a
#: single story of smooth BOLD, held-out R^2 with R^2 selection biased a redundant band's unique
#: share four times more, and per-target weightings had more bias and less power at every size)
SCORING = dict(select="r", pooled=True, measure="rsq")


def partition_fits(Xs: list[np.ndarray], Y: np.ndarray, spaces: list[str],
                   layout: Layout | None, cv: Splitter, *, batch_targets: int = 20000,
                   scoring: dict | None = None, **prepare_kw) -> dict[tuple, BandedResult]:
    """Every fit a variance partition needs, from one set of designs: the joint fit searches all
    weightings, each reduced fit the nested subset with a zero for its left-out space (exactly
    the full search restricted).

    Parameters
    ----------
    Xs : list of array (n_trs, p_b)
        One delayed design per space.
    Y : array (n_trs, t)
        Responses.
    spaces : list of str
        The spaces' names.
    layout, cv
        As in :func:`lib.engine.ridge.prepare`.
    batch_targets : int
        Targets at once.
    scoring : dict, optional
        Changes to :data:`SCORING` (``select``, ``pooled``, ``measure`` of :func:`banded_score`).
    **prepare_kw
        Passed to :func:`banded_prepare`.

    Returns
    -------
    dict
        ``{subset of spaces (tuple): BandedResult}``, for :func:`partition`.
    """
    return partition_scores(banded_prepare(Xs, layout, cv, **prepare_kw), Y, spaces,
                            batch_targets, scoring)


def partition_scores(designs: list, Y: np.ndarray, spaces: list[str],
                     batch_targets: int = 20000, scoring: dict | None = None,
                     memo: dict | None = None) -> dict[tuple, BandedResult]:
    """:func:`partition_fits` on prepared joint designs (shared by subjects with the same
    features); each design's inner-fold scores are computed once for every fit that searches it.

    Parameters
    ----------
    designs : list of Design
        :func:`banded_prepare` of the joint fit.
    Y : array (n_trs, t)
        Responses.
    spaces : list of str
        The spaces' names.
    batch_targets : int
        Targets at once.
    scoring : dict, optional
        As in :func:`partition_fits`.
    memo : dict, optional
        Inner-fold scores of these designs for this ``Y``, filled and reused (by the placebo fits).

    Returns
    -------
    dict
        ``{subset of spaces (tuple): BandedResult}``.
    """
    kw = {**SCORING, **(scoring or {})}
    memo = {} if memo is None else memo
    return {subset: banded_score(nested(designs, [spaces.index(x) for x in subset]), Y,
                                 batch_targets, memo=memo, **kw)
            for subset in needed_fits(spaces)}


def placebo_scores(placebos: list[list], Y: np.ndarray, batch_targets: int = 20000,
                   scoring: dict | None = None, memo: dict | None = None
                   ) -> list[BandedResult]:
    """The placebo joint fits scored as :func:`partition_scores` scores the real joint fit.

    Parameters
    ----------
    placebos : list of list of Design
        :func:`placebo_band_designs`.
    Y : array (n_trs, t)
        Responses.
    batch_targets : int
        Targets at once.
    scoring : dict, optional
        As in :func:`partition_fits`.
    memo : dict, optional
        The memo :func:`partition_scores` filled for this ``Y`` (reused designs are not scored
        again).

    Returns
    -------
    list of BandedResult
        One per shift.
    """
    kw = {**SCORING, **(scoring or {})}
    memo = {} if memo is None else memo
    return [banded_score(d, Y, batch_targets, memo=memo, **kw) for d in placebos]


def needed_fits(spaces: list[str]) -> list[tuple]:
    """The space subsets :func:`partition` needs: all of them, and all but one."""
    full = tuple(spaces)
    return [full] + [tuple(x for x in spaces if x != s) for s in spaces]


# --------------------------------------------------------------------------- shifted-band control
def shift_rows(X: np.ndarray, layout: Layout, frac: float) -> np.ndarray:
    """``X`` with its rows circularly shifted within each run by ``frac`` of the run's length
    (the band keeps its own smoothness and loses its alignment with BOLD and the other bands)."""
    out = np.empty_like(X)
    for run in np.unique(layout.run):
        rows = np.flatnonzero(layout.run == run)
        out[rows] = np.roll(X[rows], int(round(frac * len(rows))), axis=0)
    return out


def shift_fractions(n_shifts: int) -> np.ndarray:
    """Shifts spread over the run, away from 0: k / (n_shifts + 1), k = 1..n_shifts."""
    return np.arange(1, n_shifts + 1) / (n_shifts + 1)


def explained_part(X: np.ndarray, others: np.ndarray, layout: Layout, *, gap: int,
                   n_folds: int = 5) -> np.ndarray:
    """The part of ``X`` (n, p) that a linear function of ``others`` (n, q) explains: ridge of
    each centred column of X on the standardised ``others``, fitted on all rows with one penalty
    for all columns, chosen by the held-out error of the engine's blocked folds (``gap`` TRs
    dropped on each side, or leave one story out). Not generalised cross-validation: with q >= n
    (an LM's delayed features on one story) it always picks the smallest penalty and the fit
    interpolates. Written on SVDs rather than a ridge estimator because one SVD per fold serves
    every penalty. Overfitting moves part of X's own residual into the explained part, which
    errs towards a conservative test; underfitting would leave some of what ``others`` explain in
    the shifted residual (towards crediting a copy), and docs/validity.md 5f measures both."""
    X = np.asarray(X, np.float64)
    Z = np.asarray(others, np.float64)
    Z = (Z - Z.mean(0)) / np.where(Z.std(0) > 0, Z.std(0), 1.0)
    s0 = np.linalg.norm(Z, 2) ** 2
    grid = s0 * np.logspace(-9, 1, 31)
    err = np.zeros(len(grid))
    for train, test in blocked_folds(layout, n_folds, gap):
        mz, mx = Z[train].mean(0), X[train].mean(0)
        U, s, Vt = np.linalg.svd(Z[train] - mz, full_matrices=False)
        Q = U.T @ (X[train] - mx)                                   # (k, p)
        ZV, Xt = (Z[test] - mz) @ Vt.T, X[test] - mx
        for i, alpha in enumerate(grid):
            err[i] += float(((Xt - (ZV * (s / (s * s + alpha))) @ Q) ** 2).sum())
    U, s, _ = np.linalg.svd(Z, full_matrices=False)
    f = s * s / (s * s + grid[int(np.argmin(err))])
    return (U * f) @ (U.T @ (X - X.mean(0)))


def placebo_band_designs(Xs: list[np.ndarray], band: int, layout: Layout, cv: Splitter, *,
                         n_shifts: int = 4, conditional: bool = True, joint: list | None = None,
                         **prepare_kw) -> list[list]:
    """Per shift, the joint fit's designs with one band replaced by its placebo.

    With ``conditional`` (the pipeline's test) the placebo is the part of the band that the
    other bands explain plus its residual circularly shifted in time within each run: the band's
    relation to the others and its smoothness kept, only what it carries beyond them misaligned
    from BOLD (the null of "unique = 0"). Without, the whole band is shifted, which credits a
    band that nearly copies another (docs/validity.md 5f).

    Parameters
    ----------
    Xs : list of array (n_trs, p_b)
        One delayed design per space.
    band : int
        The tested space.
    layout, cv
        As in :func:`lib.engine.ridge.prepare`.
    n_shifts : int
        Placebos (shifts).
    conditional : bool
        Keep the part the other bands explain.
    joint : list of Design, optional
        :func:`banded_prepare` of ``Xs`` with the same settings; its weightings without the
        band are reused rather than decomposed again.
    **prepare_kw
        Passed to :func:`banded_prepare`.

    Returns
    -------
    list of list of Design
        One joint design set per shift.
    """
    X = np.asarray(Xs[band], np.float64)
    fixed = explained_part(X, np.hstack([x for i, x in enumerate(Xs) if i != band]), layout,
                           gap=cv.gap) if conditional else np.zeros_like(X)
    return [banded_prepare([(fixed + shift_rows(X - fixed, layout, f)).astype(np.float32)
                            if i == band else x for i, x in enumerate(Xs)],
                           layout, cv, reuse=None if joint is None else (joint, band),
                           **prepare_kw)
            for f in shift_fractions(n_shifts)]


def unique_vs_placebo(joint: BandedResult, placebos: list[BandedResult]) -> np.ndarray:
    """A band's unique share against its placebo: the joint fit's measure minus the mean measure
    of the joint fits with the placebo in the band's place.

    Both sides search the same weightings over bands of the same size, smoothness and relation
    to the other bands, so the selection noise that biases R^2(all) - R^2(all but the band) down
    is on both sides (docs/validity.md 5f).

    Parameters
    ----------
    joint : BandedResult
        The real joint fit.
    placebos : list of BandedResult
        :func:`placebo_scores`.

    Returns
    -------
    array (n_runs, t)
        The unique share per run and target.
    """
    return joint.run_r2 - np.mean([s.run_r2 for s in placebos], 0)
