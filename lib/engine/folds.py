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


class EngineError(ValueError):
    """Inputs the engine cannot fit (too few TRs for the folds, no targets, ...)."""


@dataclass(frozen=True)
class Layout:
    """Run, story and story position (kept-TR index) of every row of a design."""
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
            raise ValueError("Layout.single needs the story's name (it seeds the null)")
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
            raise ValueError(f"{len(lengths)} runs but {len(stories)} story labels")
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


def blocked_folds(layout: Layout, n_folds: int = 5, gap: int = 20, rows=None
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) row indices: leave one story out, or contiguous blocks of story time with
    ``gap`` TRs dropped from training on each side (see module docstring). ``rows`` restricts
    the folds to a subset (inner folds inside an outer training set)."""
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
    """Boolean masks over ``pos`` (story positions) of ``n_blocks`` contiguous blocks of its
    distinct positions, as equal as rounding allows (empty blocks left out): one story's outer
    test blocks (:func:`blocked_folds`), the scoring blocks of a held-out story
    (:func:`score_masks`) and of a noise ceiling -- one cut, so they are the same unit."""
    u = np.unique(pos)
    e = np.linspace(0, len(u), n_blocks + 1).round().astype(int)
    return [(pos >= u[a]) & (pos <= u[b - 1]) for a, b in zip(e[:-1], e[1:]) if b > a]


def story_group_folds(layout: Layout, n_groups: int, rows=None
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) row indices holding out groups of whole stories: the stories of ``rows``
    dealt round-robin (in story order) into ``n_groups`` groups. With many stories this is the
    inner-fold scheme of a fit on a dataset's training split: every validation set is whole
    stories (no gap needed), and ``n_groups`` decompositions instead of one per story."""
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
    """One outer fold: every row of the ``test_stories`` (names of ``layout.names``) is tested,
    every other row trains (a dataset's own train/test split)."""
    idx = [layout.names.index(s) for s in test_stories if s in layout.names]
    if not idx:
        raise EngineError(f"none of the test stories {list(test_stories)} is in the layout")
    test = np.isin(layout.story, idx)
    if test.all():
        raise EngineError("every story is a test story: nothing to train on")
    return [(np.flatnonzero(~test), np.flatnonzero(test))]


def aggregate_runs(run_values: np.ndarray, run_story: np.ndarray) -> np.ndarray:
    """(n_runs, ...) -> (...): mean over runs within a story, then stories with equal weight."""
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
