"""Where each row of a design sits and how it is split: :class:`Layout` (run, story, story
position), the outer and inner folds (:func:`blocked_folds`, :func:`story_group_folds`,
:func:`split_folds`), the rows a run's score is computed on (:func:`run_masks`,
:func:`score_masks`) and the aggregation of run scores into a brain score
(:func:`aggregate_runs`). Split from :mod:`lib.engine.ridge`, which fits and scores on them;
numpy only.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .docs import fill_doc


class EngineError(ValueError):
    """Inputs the engine cannot fit (too few TRs for the folds, no targets, a bad layout, ...):
    the one exception type the engine raises on bad input.

    Parameters
    ----------
    message : str
        What is wrong, with the source (subject, condition) where the caller named one.
    """


#: story time beyond the longest delay dropped between training and test blocks, in seconds:
#: the measured value that removes the autocorrelation leak (docs/validity.md, section 1); kept
#: in seconds and converted at each dataset's TR
AUTOCORR_MARGIN_S = 37.5


def default_gap(delays, tr: float) -> int:
    """The gap between training and test blocks that covers the features' delays and the
    autocorrelation of BOLD.

    Parameters
    ----------
    delays : sequence of int
        The FIR delays (TRs) the features carry.
    tr : float
        Repetition time in seconds (required: the margin is story time).

    Returns
    -------
    int
        ``max(delays)`` plus :data:`AUTOCORR_MARGIN_S` seconds of story time, in TRs.
    """
    tr = check_tr(tr)
    return int(max(max(delays), 0) + int(np.ceil(AUTOCORR_MARGIN_S / tr - 1e-9)))


def check_tr(tr) -> float:
    """``tr`` as a positive float, else :class:`EngineError` (no silent default TR)."""
    try:
        value = float(tr)
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0:
        raise EngineError(f"the repetition time must be a positive number of seconds, got {tr!r}")
    return value


@dataclass(frozen=True)
class Splitter:
    """How a design is split into outer folds and, inside each training set, inner folds.

    Parameters
    ----------
    gap : int
        TRs of story time dropped from training on each side of a held-out block of one story
        (the outer and the inner folds); :meth:`for_delays` derives it from the delays and TR.
    n_folds : int
        Outer folds: contiguous blocks of story time when the layout holds one story (several
        stories: leave one story out).
    inner_folds : int
        Inner folds, cut the same way inside each outer training set.
    inner_groups : int
        > 0: the inner folds hold out this many groups of whole training stories instead.
    folds : list of (train, test) arrays, optional
        Explicit outer folds (a dataset's own split, :func:`split_folds`; k folds of whole
        stories, :func:`story_group_folds`).
    score_blocks : int
        > 1, with leave-one-story-out folds: score each held-out story as the mean r over that
        many contiguous blocks of it (the unit of a subject who heard one story).
    """
    gap: int
    n_folds: int = 5
    inner_folds: int = 4
    inner_groups: int = 0
    folds: list | None = None
    score_blocks: int = 0

    @classmethod
    def for_delays(cls, delays, tr: float, **kw) -> "Splitter":
        """A splitter whose gap is :func:`default_gap` of ``delays`` at ``tr``."""
        return cls(gap=default_gap(delays, tr), **kw)

    def outer(self, layout: "Layout") -> list[tuple[np.ndarray, np.ndarray]]:
        """The outer (train, test) folds of ``layout``."""
        return self.folds or blocked_folds(layout, self.n_folds, self.gap)

    def inner(self, layout: "Layout", train: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """The inner (fit, validation) folds inside the training rows ``train``."""
        if self.inner_groups and len(np.unique(layout.story[train])) >= 2:
            return story_group_folds(layout, self.inner_groups, rows=train)
        return blocked_folds(layout, self.inner_folds, self.gap, rows=train)


@dataclass(frozen=True)
class Layout:
    """Run, story and story position (kept-TR index) of every row of a design.

    Parameters
    ----------
    run, story, pos : array of int (n_rows,)
        Each row's run index, story index and position in its story.
    names : tuple of str
        The story names, by story index (they seed the permutation null, so subjects who heard
        the same story share its reorderings). Build with :meth:`of_runs` or :meth:`single`.
    """
    run: np.ndarray
    story: np.ndarray
    pos: np.ndarray
    names: tuple = ()     # story names (seed the permutation null; shared across subjects)

    def __len__(self) -> int:
        return len(self.run)

    @classmethod
    def single(cls, n: int, story: str) -> "Layout":
        """One run of one story. The name is required: it seeds the permutation null, so
        subjects who heard the same story share reorderings and different stories differ."""
        if not str(story):
            raise EngineError("Layout.single needs the story's name (it seeds the null)")
        z = np.zeros(n, np.int64)
        return cls(z, z.copy(), np.arange(n), (str(story),))

    @classmethod
    def of_content(cls, X: np.ndarray) -> "Layout":
        """One run named by a hash of its features' content (the default of :func:`prepare`
        when no layout is given): the same stimulus gets the same null reorderings."""
        import hashlib

        h = hashlib.sha1(np.ascontiguousarray(X).tobytes()).hexdigest()[:16]
        return cls.single(len(X), f"content-{h}")

    @classmethod
    def of_runs(cls, lengths, stories=None) -> "Layout":
        """Runs stacked in order; ``stories[i]`` names run i's story (default: every run its own
        story, i.e. leave one run out)."""
        lengths = [int(n) for n in lengths]
        stories = list(range(len(lengths))) if stories is None else list(stories)
        if len(stories) != len(lengths):
            raise EngineError(f"{len(lengths)} runs but {len(stories)} story labels")
        names = {s: i for i, s in enumerate(dict.fromkeys(stories))}
        run = np.concatenate([np.full(n, i) for i, n in enumerate(lengths)])
        story = np.concatenate([np.full(n, names[s]) for n, s in zip(lengths, stories)])
        pos = np.concatenate([np.arange(n) for n in lengths])
        return cls(run.astype(np.int64), story.astype(np.int64), pos.astype(np.int64),
                   tuple(str(s) for s in names))

    @property
    def run_lengths(self) -> list[int]:
        return np.bincount(self.run).tolist()

    def run_story(self) -> np.ndarray:
        """Story index of each run."""
        out = np.zeros(self.run.max() + 1, np.int64)
        out[self.run] = self.story
        return out


@fill_doc
def blocked_folds(layout: Layout, n_folds: int, gap: int, rows=None
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Outer or inner folds: leave one story out, or contiguous blocks of one story's time.

    Parameters
    ----------
    layout : Layout
        The rows' runs, stories and story positions.
    n_folds : int
        Blocks of story time when the rows hold one story (several stories: one fold each).
    gap : int
        TRs of story time dropped from training on each side of a test block (every repeat of
        the story at once).
    %(rows_folds)s

    Raises
    ------
    EngineError
        When the story is too short for the folds or the gap leaves no training TRs.
    """
    rows = np.arange(len(layout)) if rows is None else np.asarray(rows)
    story, pos = layout.story[rows], layout.pos[rows]
    stories = np.unique(story)
    if len(stories) >= 2:
        return [(rows[story != s], rows[story == s]) for s in stories]
    if n_folds < 2:
        raise EngineError("need at least 2 folds")
    n_pos = len(np.unique(pos))
    if n_pos < 2 * n_folds:
        raise EngineError(f"{n_pos} TRs of story time are too few for {n_folds} folds")
    folds = []
    for block in position_blocks(pos, n_folds):
        lo, hi = pos[block].min(), pos[block].max()
        test = rows[block]
        train = rows[(pos < lo - gap) | (pos > hi + gap)]
        if len(train) < 2:
            raise EngineError(f"a gap of {gap} TRs leaves no training TRs around the test block "
                              f"{lo}..{hi} ({n_pos} TRs of story time, {n_folds} folds)")
        folds.append((train, test))
    return folds


def position_blocks(pos: np.ndarray, n_blocks: int) -> list[np.ndarray]:
    """Contiguous blocks of a story's distinct positions, as equal as rounding allows.

    One cut for one story's outer test blocks (:func:`blocked_folds`), the scoring blocks of a
    held-out story (:func:`score_masks`) and a noise ceiling's blocks, so they are the same
    unit.

    Parameters
    ----------
    pos : array of int
        Story positions of the rows.
    n_blocks : int
        Blocks wanted (empty ones are left out).

    Returns
    -------
    list of array of bool
        One mask over ``pos`` per block.
    """
    u = np.unique(pos)
    e = np.linspace(0, len(u), n_blocks + 1).round().astype(int)
    return [(pos >= u[a]) & (pos <= u[b - 1]) for a, b in zip(e[:-1], e[1:]) if b > a]


@fill_doc
def story_group_folds(layout: Layout, n_groups: int, rows=None
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Folds that hold out groups of whole stories.

    The stories of ``rows`` are dealt round-robin (in story order) into ``n_groups`` groups:
    every validation set is whole stories (no gap needed), and ``n_groups`` decompositions
    instead of one per story. The outer folds of the powered design (every story held out once)
    and the inner folds of a fit on many training stories.

    Parameters
    ----------
    layout : Layout
        The rows' stories.
    n_groups : int
        Groups of stories (at most one per story).
    %(rows_folds)s

    Raises
    ------
    EngineError
        With fewer than 2 stories or groups.
    """
    rows = np.arange(len(layout)) if rows is None else np.asarray(rows)
    stories = np.unique(layout.story[rows])
    if len(stories) < 2:
        raise EngineError(f"story-grouped folds need at least 2 stories, got {len(stories)}")
    k = min(int(n_groups), len(stories))
    if k < 2:
        raise EngineError("need at least 2 story groups")
    group = {s: i % k for i, s in enumerate(stories)}
    g = np.array([group[s] for s in layout.story[rows]])
    return [(rows[g != i], rows[g == i]) for i in range(k)]


def split_folds(layout: Layout, test_stories) -> list[tuple[np.ndarray, np.ndarray]]:
    """One outer fold from a dataset's own train/test split.

    Parameters
    ----------
    layout : Layout
        The rows' stories.
    test_stories : sequence of str
        Names of ``layout.names`` whose rows are tested.

    Returns
    -------
    list of (train, test)
        One fold: every other row trains.

    Raises
    ------
    EngineError
        When no test story is in the layout, or every story is one.
    """
    idx = [layout.names.index(s) for s in test_stories if s in layout.names]
    if not idx:
        raise EngineError(f"none of the test stories {list(test_stories)} is in the layout")
    test = np.isin(layout.story, idx)
    if test.all():
        raise EngineError("every story is a test story: nothing to train on")
    return [(np.flatnonzero(~test), np.flatnonzero(test))]


def aggregate_runs(run_values: np.ndarray, run_story: np.ndarray) -> np.ndarray:
    """Run values to one value: the mean over runs within a story, then stories with equal weight.

    Parameters
    ----------
    run_values : array (n_runs, ...)
        A value per run (NaN ignored).
    run_story : array of int (n_runs,)
        Each run's story.

    Returns
    -------
    array (...)
        The aggregated value.
    """
    stories = np.unique(run_story)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean([np.nanmean(run_values[run_story == s], 0) for s in stories], 0)


def run_masks(layout: Layout, test: np.ndarray) -> dict[int, np.ndarray]:
    runs = layout.run[test]
    return {int(r): np.flatnonzero(runs == r) for r in np.unique(runs)}


def score_masks(layout: Layout, test: np.ndarray, n_blocks: int = 0
                ) -> dict[int, list[np.ndarray]]:
    """Per run a fold tests, the index sets into ``test`` whose r its score averages: all its
    test rows, or with ``n_blocks`` (a held-out story scored per block) that many contiguous
    blocks of its story positions, cut as :func:`blocked_folds` cuts one story."""
    out = {}
    for run, m in run_masks(layout, test).items():
        out[run] = ([m[b] for b in position_blocks(layout.pos[test[m]], n_blocks)]
                    if n_blocks > 1 else [m])
    return out
