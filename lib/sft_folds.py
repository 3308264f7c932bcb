"""Which stories each fine-tuned model trains on, and whom it scores (stage 04's fold plan).

A model must never have trained on a story it scores, nor on a near-duplicate of one (pieman /
piemanpni: >5% shared word 4-grams), and one subject's fit must use one model's features for all
of its stories: mixing fold models inside a fit trains the ridge on one model's feature space
and tests it on another's, which biases Δ (docs/validity.md, section 5e).
"""
from __future__ import annotations

from .cache import key_of
from .errors import DataError

from .transcripts import OVERLAP_THRESHOLD, overlap  # noqa: F401  (re-exported)


#: a held-out fold must leave at least this share of the corpus (characters) to train on
MIN_TRAIN_SHARE = 0.25


def _near(corpus: dict[str, str], held) -> set:
    """Corpus stories (not held) whose text overlaps a held story (near-duplicates)."""
    return {c for c in corpus if c not in held and
            any(overlap(corpus[c], corpus[h]) > OVERLAP_THRESHOLD for h in held if h in corpus)}


def _subject_set_folds(corpus: dict[str, str], subject_stories: dict, exclude=()) -> list[dict]:
    """One fold per distinct set of stories that subjects heard: its model never trained on any
    story of the set, and it scores every story of those subjects, so each subject's fit uses the
    features of one model (fold models mixed inside one fit bias Δ; docs/validity.md, 5e)."""
    sets: dict[tuple, list[str]] = {}
    for sub, stories in sorted(subject_stories.items()):
        sets.setdefault(tuple(sorted(set(stories))), []).append(sub)
    total = sum(len(t) for t in corpus.values())
    folds = []
    for held, subs in sorted(sets.items()):
        out = set(held) | set(exclude)
        near = _near(corpus, out)
        train = sorted(c for c in corpus if c not in out and c not in near)
        share = sum(len(corpus[c]) for c in train) / max(total, 1)
        if share < MIN_TRAIN_SHARE:
            raise DataError(
                f"subjects {', '.join(subs)} heard {', '.join(held)}: holding those (and their "
                f"near-duplicates) out leaves {share:.0%} of the fine-tuning corpus to train on "
                f"(< {MIN_TRAIN_SHARE:.0%}); fine-tune on a corpus of other stories instead "
                f"(sft_mode: external, as params/lebel.yaml does)")
        name = "-".join(held)
        folds.append(dict(fold="set-" + (name if len(name) <= 40 else key_of(held)[:10]),
                          score_stories=list(held), heldout=sorted(out | near),
                          train_stories=train, leaky=False, subjects=subs))
    return folds


def plan_folds(scored: list[str], corpus: dict[str, str], mode: str = "heldout",
               n_folds: int | None = None, exclude=(), subject_stories: dict | None = None
               ) -> list[dict]:
    """Which stories each SFT model trains on and which scored stories it is used for.

    ``heldout`` with ``subject_stories`` (subject -> the stories it heard): one fold per distinct
    story set (:func:`_subject_set_folds`; ``n_folds`` does not apply), each naming its
    ``subjects``. Without it: ``n_folds`` folds of scored stories, a model per story.

    ``external``: one model for every scored story, trained on the corpus stories that are
    neither scored nor in ``exclude`` (nor near-duplicates of either) -- for a dataset whose
    stories are not in the fine-tuning corpus at all (the LeBel moth stories with the Narratives
    corpus), so no cross-fitting is needed.

    Returns a list of folds: ``{"fold", "score_stories", "heldout", "train_stories", "leaky",
    "subjects"}`` (``subjects`` empty: the fold's model serves every subject of its stories).
    """
    if mode not in ("heldout", "leaky", "external"):
        raise ValueError(f"SFT mode must be 'heldout', 'leaky' or 'external', got {mode!r}")
    if mode == "heldout" and subject_stories:
        return _subject_set_folds(corpus, subject_stories, exclude)
    if mode == "external":
        held = set(scored) | set(exclude)
        near = _near(corpus, held)
        train = sorted(c for c in corpus if c not in held and c not in near)
        if not train:
            raise DataError(f"no corpus story left to train on after holding out the "
                            f"{len(scored)} scored stories and {sorted(exclude)}")
        return [dict(fold="external-" + key_of(train)[:8], score_stories=list(scored),
                     heldout=sorted(held | near), train_stories=train, leaky=False, subjects=[])]
    if mode == "leaky":
        return [dict(fold="leaky", score_stories=list(scored), heldout=[],
                     train_stories=sorted(corpus), leaky=True, subjects=[])]
    n_folds = min(n_folds or len(scored), len(scored))
    folds = []
    for k in range(n_folds):
        held = [s for i, s in enumerate(sorted(scored)) if i % n_folds == k]
        near = _near(corpus, held)
        train = sorted(c for c in corpus if c not in held and c not in near)
        if not train:
            raise DataError(f"no training story left after holding out {held}")
        folds.append(dict(fold=f"fold{k}-" + "-".join(held), score_stories=held,
                          heldout=sorted(set(held) | near), train_stories=train, leaky=False,
                          subjects=[]))
    return folds


def check_no_leak(folds: list[dict]) -> None:
    """No fold trains on a story it scores; a subject named by a fold has it as its only fold."""
    seen: dict[str, str] = {}
    for f in folds:
        for sub in f.get("subjects", []):
            if seen.setdefault(sub, f["fold"]) != f["fold"]:
                raise AssertionError(f"{sub} is scored by two fold models: {seen[sub]}, {f['fold']}")
        if f["leaky"]:
            continue
        bad = set(f["score_stories"]) & set(f["train_stories"])
        if bad:
            raise AssertionError(f"{f['fold']}: trains on the stories it scores: {sorted(bad)}")
