"""Banded ridge with this project's folds, and variance partitioning between feature spaces.

Several feature spaces (bands) are fitted jointly by random search over the bands' relative
weights w (the one-hot corners, the uniform weighting, then Dirichlet draws with concentrations
0.1 and 1 in turn -- himalaya's ``MultipleKernelRidgeCV(solver="random_search")`` scheme): each band
is standardised, scaled by sqrt(w_b), and the weighted design goes through the single-space
engine's own folds, inner folds, standardisation and validation-r selection
(:func:`lib.ridge.prepare`, :func:`lib.ridge.inner_scores`); each target keeps the (weighting,
alpha) with the best inner validation score -- R^2 (``select="r2"``, the default here): variance
partitioning adds and subtracts R^2, which depends on the prediction's scale, and a penalty
chosen by r alone (scale-free; ties go to the larger penalty) shrinks predictions towards 0 and
leaves R^2 near 0 -- a partition built that way came out with shared variance -0.09 where the
truth was 0. Written on the engine rather than calling himalaya's
estimator because himalaya's cross-validation works on precomputed kernels and so cannot
re-standardise each inner fit: measured against the engine with one band, it differed by more than
1e-3 in r on 15% of targets (up to 0.005); built on the engine, one band *is* the engine. himalaya
still provides the product-measure split (``r2_score_split``) and is the reference in the tests.

Scores are held-out R^2 per fold and run, predictions and BOLD centred on the test block (offsets
ignored, like r), averaged like brain scores. Partition of a list of spaces S:

* ``joint``: R^2 of all spaces together; ``split:<s>``: the product-measure share of each space
  (shares add up to the joint R^2);
* ``unique:<s>`` = R^2(S) - R^2(S without s): what s adds that nothing else explains;
* ``shared`` = R^2(S) - sum of the uniques; with two spaces A, B this is the classic
  set-theoretic decomposition (unique A, unique B, shared = R^2_A + R^2_B - R^2_AB).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .ridge import (ALPHA_TIE, DEFAULT_ALPHAS, Layout, run_masks, standardised, aggregate_runs,
                    inner_scores, pearson_cols, prepare)


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
    designs: list | None = None   # one lib.ridge.Design per weighting (for the null)
    valid: np.ndarray | None = None
    run_split: np.ndarray | None = None   # (n_bands, n_runs, t)


def band_weights(n_bands: int, n_iter: int = 20, seed: int = 0) -> np.ndarray:
    """(n_candidates, n_bands) weightings: corners, uniform, then Dirichlet draws."""
    if n_bands == 1:
        return np.ones((1, 1))
    rng = np.random.default_rng(seed)
    fixed = [np.eye(n_bands), np.full((1, n_bands), 1.0 / n_bands)]
    draws = [rng.dirichlet(np.full(n_bands, (0.1, 1.0)[i % 2]))
             for i in range(max(0, n_iter - n_bands - 1))]
    return np.vstack(fixed + ([np.array(draws)] if draws else []))


def _r2(y, p):
    """R^2 of test-centred predictions vs test-centred y, (n, t)."""
    y = y - y.mean(0, keepdims=True)
    p = p - p.mean(0, keepdims=True)
    return 1 - ((y - p) ** 2).sum(0) / np.maximum((y * y).sum(0), 1e-12)


def _split_r2(y, parts):
    """himalaya's product measure on test-centred data: share of each band, (b, t)."""
    from himalaya.scoring import r2_score_split

    y = y - y.mean(0, keepdims=True)
    parts = parts - parts.mean(1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(r2_score_split(y, parts), np.float64)


def banded_prepare(Xs: list[np.ndarray], layout: Layout | None = None, *, gap: int,
                   n_folds: int = 5, inner_folds: int = 4, alphas=DEFAULT_ALPHAS,
                   n_iter: int = 20, seed: int = 0, backend: str = "numpy",
                   device=None) -> list:
    """One :class:`lib.ridge.Design` per band weighting (shared by every subject with the
    same features and TRs)."""
    X = np.hstack([np.asarray(x, np.float32) for x in Xs])
    edges = np.cumsum([0] + [x.shape[1] for x in Xs])
    groups = [np.arange(a, b) for a, b in zip(edges[:-1], edges[1:])]
    W = band_weights(len(Xs), n_iter, seed)
    designs = [prepare(X, layout, gap=gap, n_folds=n_folds, inner_folds=inner_folds,
                       alphas=alphas, backend=backend, device=device,
                       col_scale=np.concatenate([np.full(len(g), np.sqrt(w_b))
                                                 for g, w_b in zip(groups, w)]), groups=groups)
               for w in W]
    for D, w in zip(designs, W):
        D.band_weights = w
    return designs


def banded_fit(Xs: list[np.ndarray], Y: np.ndarray, layout: Layout | None = None, *,
               gap: int, n_folds: int = 5, inner_folds: int = 4, alphas=DEFAULT_ALPHAS,
               n_iter: int = 20, seed: int = 0, backend: str = "numpy", device=None,
               batch_targets: int = 20000, keep_designs: bool = False, select: str = "r2"
               ) -> BandedResult:
    """Banded ridge over ``Xs`` (one (n, p_b) delayed design per space) for targets ``Y``;
    hyperparameters chosen by inner-fold ``select`` score (``r2`` or ``r``)."""
    designs = banded_prepare(Xs, layout, gap=gap, n_folds=n_folds, inner_folds=inner_folds,
                             alphas=alphas, n_iter=n_iter, seed=seed, backend=backend,
                             device=device)
    res = banded_score(designs, Y, batch_targets, select)
    if not keep_designs:
        res.designs = None
    return res


def banded_score(designs: list, Y: np.ndarray, batch_targets: int = 20000,
                 select: str = "r2") -> BandedResult:
    """Score targets ``Y`` with prepared banded designs (:func:`banded_prepare`)."""
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
            rs = np.stack([B.to_numpy(inner_scores(B, D.folds[f], al, Yb, select))
                           for D in designs])
            best = _choose(rs)                                   # index c * n_alpha + a
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
            for run, m in run_masks(lay, test).items():
                joint = parts[:, m].sum(0)
                fold_r2[f, run, cols] = _r2(yt[m], joint)
                fold_r[f, run, cols] = B.to_numpy(pearson_cols(
                    B, B.asarray(joint), B.asarray(yt[m])))
                fold_split[f, :, run, cols] = _split_r2(yt[m], parts[:, m]).T
    story = lay.run_story()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        run_r2, run_r, run_split = (np.nanmean(a, 0) for a in (fold_r2, fold_r, fold_split))
    c_idx, a_idx = np.divmod(choice, len(al))
    weights = np.moveaxis(W[c_idx], -1, 1)                       # (folds, bands, t)
    edge = float(np.mean((a_idx == 0) | (a_idx == len(al) - 1)))
    return BandedResult(aggregate_runs(run_r2, story), aggregate_runs(run_r, story),
                        np.stack([aggregate_runs(x, story) for x in run_split]), run_r2,
                        weights, al[a_idx], choice, edge, designs, valid, run_split)


def _choose(rs: np.ndarray) -> np.ndarray:
    """Per target, the (weighting, alpha) with the best validation r: ties within ALPHA_TIE go
    to the earlier weighting, then to the larger alpha (as in the single-space engine)."""
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
    full = tuple(spaces)
    out = {"joint": fits[full].r2}
    uniq = 0
    for i, s in enumerate(spaces):
        rest = tuple(x for x in spaces if x != s)
        u = fits[full].r2 - fits[rest].r2
        out[f"unique:{s}"] = u
        out[f"split:{s}"] = fits[full].split[i]
        uniq = uniq + u
    out["shared"] = fits[full].r2 - uniq
    return out


def needed_fits(spaces: list[str]) -> list[tuple]:
    """The space subsets :func:`partition` needs: all of them, and all but one."""
    full = tuple(spaces)
    return [full] + [tuple(x for x in spaces if x != s) for s in spaces]


# --------------------------------------------------------------------------- null
@dataclass
class BandedNull:
    """Permutation null of a banded fit's R^2, its (weighting, alpha) choices reused -- the
    banded counterpart of :class:`lib.inference.NullPlan`."""
    designs: list
    choice: np.ndarray        # (n_folds, t)
    valid: np.ndarray
    Y: np.ndarray
    spec: object
    seed: int = 0

    def __post_init__(self):
        from .inference import layout_orders

        lay = self.designs[0].layout
        self.orders = layout_orders(lay, self.spec, self.seed, dict(enumerate(lay.names)))
        self._hats: dict = {}

    def hat(self, f: int, g: int):
        """Fold f's hat matrix for choice g = weighting * n_alphas + alpha (computed once)."""
        if (f, g) not in self._hats:
            c, a = divmod(int(g), len(self.designs[0].alphas))
            D = self.designs[c]
            self._hats[f, g] = D.folds[f].outer.hat(D.alphas[a])
        return self._hats[f, g]

    def batch(self, b0: int, b1: int, cols: np.ndarray) -> np.ndarray:
        from .inference import fold_null

        D = self.designs[0]
        P = self.orders[b0:b1]
        acc = np.zeros((D.n_runs, len(P), len(cols)))
        cnt = np.zeros(D.n_runs)
        Yc = standardised(D.B, self.Y, cols)
        for f, fd in enumerate(D.folds):
            for run in np.unique(D.layout.run[fd.test]):
                cnt[run] += 1

            for run, rr in fold_null(D.B, fd, lambda g, f=f: self.hat(f, g),
                                     self.choice[f, cols], Yc, P, D.layout,
                                     metric="r2").items():
                acc[run] += rr
        run_null = acc / np.maximum(cnt, 1)[:, None, None]
        return aggregate_runs(run_null, D.layout.run_story()).astype(np.float32)


@dataclass
class UniqueNull:
    """Null of unique R^2 = R^2(full) - R^2(reduced), the same reorderings for both."""
    full: BandedNull
    reduced: BandedNull

    @property
    def valid(self):
        return self.full.valid & self.reduced.valid

    def batch(self, b0: int, b1: int, cols: np.ndarray) -> np.ndarray:
        return self.full.batch(b0, b1, cols) - self.reduced.batch(b0, b1, cols)
