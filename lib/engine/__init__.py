"""The ridge engine: encoding models and their statistics, arrays in, arrays out.

It imports numpy, scipy, pandas and torch (never the rest of ``lib``), so it can be used on any
(TRs x features) design and (TRs x targets) responses, the way himalaya is.

Fit and score (:mod:`lib.engine.ridge`; layouts and folds in :mod:`lib.engine.folds`):
    ``Layout.of_runs(lengths, stories)``   which run / story / story position each row is
    ``Layout.single(n, story)``            one run of one named story (the name seeds the null)
    ``prepare(X, layout, delays=...)``     folds (leave one story out, or blocks of one story with
                                           a gap), inner folds, one eigendecomposition per fit;
                                           ``folds=split_folds(layout, test_stories)`` for a fixed
                                           split, ``inner_groups=k`` for story-grouped inner folds
                                           ``score_blocks=k``: held-out stories scored as the mean
                                           r over k blocks (the unit of one-story designs)
    ``score(design, Y)``                   per-target brain scores (mean per-fold r), alphas
    ``heldout_predictions(design, Y)``     the held-out predictions themselves
    ``fit_score(X, Y, ...)``               prepare + score
Statistics (:mod:`lib.engine.inference`, :mod:`lib.engine.paired`, :mod:`lib.engine.crossed`):
    ``null_plan(design, Y, result, NullSpec(...))`` + ``permutation_test([[plan]], scores, spec)``
                                           block-permutation p-values (Besag-Clifford stopping)
    ``paired_stats(a, b)``                 Δ across subjects: sign-flip p, t CI, Wilcoxon, d_z
    ``paired_comparison(y, pa, pb, stories, {"name": cols})``
                                           Δ within one subject on held-out time: block CI and p
    ``crossed_test(D)``                    Δ over subjects x fine-tuning seeds (both random)
    ``seed_interval`` / ``fixed_effect`` / ``trend``
                                           held-out-time Δ averaged over seeds (their variance
                                           in the CI), subjects combined (Q, I²), the slope of Δ
                                           over log tokens across fine-tuning checkpoints
Banded ridge and variance partitioning (:mod:`lib.engine.partition`):
    ``partition_fits(Xs, Y, spaces, layout, gap=...)``  joint and leave-one-space-out fits
    ``placebo_band_designs`` + ``placebo_scores`` + ``unique_vs_placebo``
                                           a space's unique share against its conditional
                                           placebo (the test of "adds nothing")

A researcher's five lines (three stories of 200 TRs, 3 delays; the last story held out):

>>> import numpy as np
>>> from lib.engine import Layout, heldout_predictions, prepare, split_folds
>>> rng = np.random.default_rng(0); X = rng.standard_normal((600, 30)); Y = X[:, :5] + rng.standard_normal((600, 5))
>>> layout = Layout.of_runs([200, 200, 200], ["a", "b", "c"])
>>> design = prepare(X, layout, folds=split_folds(layout, ["c"]), gap=0, inner_groups=2)
>>> rows, pred, alphas = heldout_predictions(design, Y)
>>> bool(np.corrcoef(pred[:, 0], Y[rows, 0])[0, 1] > 0.5), len(rows)
(True, 200)
"""
from .combine import fixed_effect, seed_interval, trend
from .crossed import crossed_test
from .inference import NullSpec, null_plan, paired_stats, permutation_test
from .paired import paired_comparison
from .folds import EngineError, Layout, blocked_folds, split_folds, story_group_folds
from .ridge import fit_score, heldout_predictions, prepare, score

__all__ = ["Layout", "prepare", "score", "fit_score", "heldout_predictions", "blocked_folds",
           "split_folds", "story_group_folds", "EngineError", "NullSpec", "null_plan",
           "permutation_test", "paired_stats", "paired_comparison", "crossed_test",
           "seed_interval", "fixed_effect", "trend"]
