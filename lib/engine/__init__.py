"""The ridge engine: encoding models and their statistics, arrays in, arrays out.

It imports numpy, scipy, pandas and torch (never the rest of ``lib``), so it can be used on any
(TRs x features) design and (TRs x targets) responses, the way himalaya is.

Fit and score (:mod:`lib.engine.ridge`; layouts and folds in :mod:`lib.engine.folds`):
    ``Layout.of_runs(lengths, stories)``   which run / story / story position each row is
    ``Splitter(gap=..., ...)``             the outer and inner folds in one object:
                                           ``Splitter.for_delays(delays, tr)`` derives the gap
                                           (no default TR); ``folds=split_folds(layout, tests)``
                                           for a fixed split, ``inner_groups=k`` for
                                           story-grouped inner folds, ``score_blocks=k``
    ``prepare(X, layout, cv)``             one eigendecomposition per fit
    ``score(design, Y)``                   per-target brain scores (mean per-fold r), alphas
    ``heldout_predictions(design, Y)``     the held-out predictions themselves
    ``fit_score(X, Y, layout, cv)``        prepare + score
Statistics (:mod:`lib.engine.inference`, :mod:`lib.engine.paired`, :mod:`lib.engine.crossed`,
:mod:`lib.engine.combine`):
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
    ``partition_fits(Xs, Y, spaces, layout, cv)``  joint and leave-one-space-out fits
    ``placebo_band_designs`` + ``placebo_scores`` + ``unique_vs_placebo``
                                           a space's unique share against its conditional
                                           placebo (the test of "adds nothing")

``__all__`` is the public API: the rest of ``lib`` imports only these names (a test checks),
and every function and class among them has a numpydoc docstring. The engine raises one
exception type on bad input, :class:`EngineError`.

A researcher's five lines (three stories of 200 TRs, 3 delays; the last story held out):

>>> import numpy as np
>>> from lib.engine import Layout, Splitter, heldout_predictions, prepare, split_folds
>>> rng = np.random.default_rng(0); X = rng.standard_normal((600, 30)); Y = X[:, :5] + rng.standard_normal((600, 5))
>>> layout = Layout.of_runs([200, 200, 200], ["a", "b", "c"])
>>> design = prepare(X, layout, Splitter(gap=0, folds=split_folds(layout, ["c"]), inner_groups=2))
>>> rows, pred, alphas = heldout_predictions(design, Y)
>>> bool(np.corrcoef(pred[:, 0], Y[rows, 0])[0, 1] > 0.5), len(rows)
(True, 200)
"""
from .combine import fixed_effect, seed_interval, trend
from .crossed import crossed_test
from .folds import (EngineError, Layout, Splitter, aggregate_runs, blocked_folds, default_gap,
                    position_blocks, split_folds, story_group_folds)
from .inference import (NullPlan, NullSpec, ceiling_from_isc, fdr_bh, isc_reliability,
                        normalised, null_plan, paired_stats, permutation_test, repeat_ceiling,
                        sign_flip_pvalues, subject_null, t_ci, zscore_time)
from .paired import (block_contributions, choose_unit, exchange_unit_of, fit_difference,
                     inverted_ci, paired_comparison, sign_flip_p, target_scores)
from .partition import (banded_prepare, partition_fits, partition_measures, partition_scores,
                        placebo_band_designs, placebo_scores, unique_vs_placebo)
from .ridge import (DEFAULT_ALPHAS, DEFAULT_DELAYS, fit_score, heldout_predictions, np_pearson,
                    prepare, score)
from .second_level import random_effects_map

__all__ = [
    # layouts, folds, errors
    "Layout", "Splitter", "EngineError", "default_gap", "blocked_folds", "split_folds",
    "story_group_folds", "position_blocks", "aggregate_runs",
    # ridge
    "DEFAULT_ALPHAS", "DEFAULT_DELAYS", "prepare", "score", "fit_score", "heldout_predictions",
    "np_pearson", "zscore_time",
    # inference across subjects, nulls, ceilings
    "NullSpec", "NullPlan", "null_plan", "permutation_test", "subject_null", "fdr_bh",
    "paired_stats", "sign_flip_pvalues", "t_ci", "normalised", "ceiling_from_isc",
    "isc_reliability", "repeat_ceiling", "random_effects_map", "crossed_test",
    # paired comparisons on held-out time, seeds and subjects combined
    "paired_comparison", "target_scores", "fit_difference", "block_contributions",
    "choose_unit", "exchange_unit_of", "sign_flip_p", "inverted_ci", "seed_interval",
    "fixed_effect", "trend",
    # banded ridge and variance partitioning
    "banded_prepare", "partition_fits", "partition_scores", "partition_measures",
    "placebo_band_designs", "placebo_scores", "unique_vs_placebo",
]
