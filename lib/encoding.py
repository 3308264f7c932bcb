"""Stage 05's fits over BOLD volumes and surface vertices: :class:`VolumeJob`, the unit protocol
of :mod:`lib.units` for targets that live in a mask (:mod:`lib.geometry`).

A unit (:class:`lib.units.Unit`) fits one condition (``raw``, ``sft``, ``control``, ``word_rate``,
...; one SFT seed) for a few subjects who heard the same stories with the same TRs: they share
the features, the folds and every decomposition (:func:`lib.engine.ridge.prepare` once,
:func:`lib.engine.ridge.score` per subject), and each subject's BOLD is read inside the unit, one
subject at a time.

Per subject, all its runs are fitted together (:mod:`lib.engine.ridge` decides the folds: leave one story
out, or contiguous blocks of story time with a gap when it heard one story, repeats held out
together). Targets: every voxel in the mask, the whole-brain mean BOLD per TR, the mean BOLD of each
ROI label. Each run's BOLD is z-scored over its kept TRs (runs differ in baseline). Next to every
score is its *chance* score: the same features circularly shifted in time by half the story
(:func:`lib.spaces.mismatch`), fitted and scored identically.

:func:`lib.reduction.reduce_volumes` gathers the per-subject files into ``scores.csv`` (one row per subject, story, run,
condition, seed and target), ``voxel_scores.npz``, maps, the noise ceilings and the group
permutation tests (:mod:`lib.engine.inference`).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .data import DataError
from .job import (PARTITION, Job, Settings, design, design_inputs, input_key, labels_of,
                  layer_designs, mask_of, splitter, subject_targets, summary_names)
from .engine import EngineError, score
from .features import FeatureMaps
from .transcripts import read_transcript, stimulus_groups
from .geometry import mask_array, save_geometry
from .units import Unit

__all__ = ["VolumeJob", "volume_job", "partition_members", "partition_seeds"]

FAILS_ALONE = (DataError, EngineError, OSError)   # a subject with bad input fails alone


class VolumeJob(Job):
    """Stage 05 over BOLD volumes or surface vertices (the unit protocol of :mod:`lib.units`):
    a subject's targets are every voxel in the mask, the whole-brain mean and the ROI means;
    ``partition`` units fit the banded variance partition."""

    def unit_key(self, condition: str, seed: int, subject: str) -> str:
        if condition == PARTITION:
            members = partition_members(self, seed)
            return input_key(self, PARTITION, seed, subject,
                             extra=[("scheme", PARTITION_SCHEME)] +
                             [input_key(self, c, sd, subject) for _, c, sd in members])
        return input_key(self, condition, seed, subject)

    def fit(self, unit: Unit, subjects: list[str]):
        mask = mask_of(self)
        labels = labels_of(self, mask)
        fit_one = _fit_partition if unit.condition == PARTITION else _fit_subject
        cache: dict = {}        # designs shared by the unit's subjects
        for sub in subjects:
            try:
                out = fit_one(self, unit, sub, subject_targets(self, sub, mask, labels), cache)
            except FAILS_ALONE as e:
                out = e
            yield sub, out


# --------------------------------------------------------------------------- one subject
def _fit_subject(job: Job, unit: Unit, sub: str, Y: np.ndarray, cache: dict
                 ) -> tuple[dict, dict]:
    st, names = job.settings, summary_names(job)
    n_sum = len(names)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        D = design(job, unit.condition, unit.seed, sub, cache)
        res = score(D, Y, st.batch_targets, source=f"{sub} {unit.condition}")
    arrays = dict(run_scores=res.run_scores, fold_alphas=res.alphas.astype(np.float32),
                  valid=res.valid, concat_r=res.concat_r)
    if st.chance:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ch = score(design(job, unit.condition, unit.seed, sub, cache, mismatched=True), Y,
                       st.batch_targets)
        arrays["chance_run_scores"] = ch.run_scores
    if (unit.condition, unit.seed) in job.all_layers and unit.condition in st.layer_conditions:
        arrays["layer_scores"] = _layer_scores(job, unit, sub, Y[:, -n_sum:], cache)
    meta = dict(subject=sub, condition=unit.condition, seed=unit.seed,
                runs=[[r.story, int(r.run)] for r in job.subject_runs(sub).itertuples()],
                scheme=D.scheme, gap=D.gap, n_folds=len(D.folds),
                edge_fraction=res.edge_fraction, edge_fraction_summary=_edge(res, D, n_sum),
                n_invalid=res.n_invalid, summary=names, warnings=_meaningful(caught, res))
    return arrays, meta


def _meaningful(caught, res) -> list[str]:
    """The messages of the warnings a fit raised, less numpy's floating-point flags of matrix
    products when every held-out prediction came out finite. Some OpenBLAS kernels leave the
    FE_INVALID flag set on finite inputs and outputs (numpy#24067, OpenBLAS#1924): seen here on
    one CPU, once in two identical fits of a 5-column design, with bit-for-bit the same scores.
    A real NaN or inf in any held-out prediction reaches ``concat_r`` (sums over every fold's
    predictions), and then the warning is kept."""
    finite = bool(np.isfinite(res.concat_r[res.valid]).all())
    return [str(w.message) for w in caught
            if not (finite and issubclass(w.category, RuntimeWarning)
                    and "encountered in matmul" in str(w.message))]


def _edge(res, D, n_sum: int) -> list[float]:
    """Share of folds whose alpha is a real grid edge, per summary target."""
    return [float(v) for v in res.edge[:, -n_sum:].mean(0)]


def _layer_scores(job: Job, unit: Unit, sub: str, Ysum: np.ndarray, cache: dict) -> np.ndarray:
    """(n_layers, n_runs, n_summary) brain scores of every layer for the summary targets."""
    designs = layer_designs(job, unit.condition, unit.seed, sub, cache)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = [score(D, Ysum, job.settings.batch_targets).run_scores for D in designs]
    return np.stack(out).astype(np.float32)


# --------------------------------------------------------------------------- partition units


def partition_members(job: Job, seed: int) -> list[tuple[str, str, int]]:
    """(space name, condition, seed) of each partition space: ``lm:<cond>`` is that LM's
    activations (its ``seed`` when it has one, else seed 0), anything else a feature space."""
    out = []
    for name in job.settings.partition:
        cond = name.split(":", 1)[1] if name.startswith("lm:") else name
        out.append((name, cond, seed if (cond, seed) in job.features else 0))
    return out


def partition_seeds(job: Job) -> list[int]:
    """One partition per seed of its LM spaces (seed 0 when none has several)."""
    if not job.settings.partition:
        return []
    lms = [n.split(":", 1)[1] for n in job.settings.partition if n.startswith("lm:")]
    return sorted({sd for c, sd in job.features if c in lms}) or [0]


#: 2: nested band weightings, the reduced fits drawn from the joint fit's designs; r selection,
#: the signed squared held-out r as the measure, and one weighting per subject and outer fold
#: (pooled over its targets; alphas per target): docs/validity.md 5f measured it better than
#: per-target weightings on every row (less bias of a band that adds nothing, more power).
#: 3: each tested space (partition_null) also gets the joint fits with its conditional placebo
PARTITION_SCHEME = 3
#: shifts of a tested space's residual, one placebo joint fit each (docs/validity.md 5f)
PARTITION_SHIFTS = 4


def _partition_inputs(job: Job, seed: int, sub: str, cache: dict) -> tuple[list, object]:
    """The partition spaces' delayed designs for ``sub`` (in ``settings.partition`` order) and
    their layout, read once for the joint designs and every placebo."""
    key = (job.signature(sub), "inputs")
    if key not in cache:
        X = [design_inputs(job, cond, sd, sub) for _, cond, sd in partition_members(job, seed)]
        cache[key] = [x for x, _ in X], X[0][1]
    return cache[key]


def _prepare_kw(job: Job, sub: str) -> dict:
    st = job.settings
    return dict(alphas=st.alphas, n_iter=st.partition_n_iter, backend=st.backend,
                device=st.device)


def _partition_designs(job: Job, seed: int, sub: str, cache: dict) -> list:
    """The joint fit's designs, one per band weighting (:func:`lib.engine.partition.band_weights`
    nests every reduced fit's candidates in them); shared by subjects with the same features."""
    from .engine import banded_prepare

    key = job.signature(sub)
    if key not in cache:
        Xs, layout = _partition_inputs(job, seed, sub, cache)
        cache[key] = banded_prepare(Xs, layout, splitter(job, sub), **_prepare_kw(job, sub))
    return cache[key]


def _placebo_designs(job: Job, seed: int, sub: str, band: int, cache: dict) -> list:
    """Per shift, the joint fit's designs with space ``band`` replaced by its conditional
    placebo (:func:`lib.engine.partition.placebo_band_designs`); shared like the joint designs."""
    from .engine import placebo_band_designs

    key = (job.signature(sub), "placebo", band)
    if key not in cache:
        Xs, layout = _partition_inputs(job, seed, sub, cache)
        cache[key] = placebo_band_designs(Xs, band, layout, splitter(job, sub),
                                          n_shifts=PARTITION_SHIFTS,
                                          joint=_partition_designs(job, seed, sub, cache),
                                          **_prepare_kw(job, sub))
    return cache[key]


def _placebo_arrays(job: Job, seed: int, sub: str, names: list[str], joint, Y,
                    cache: dict, memo: dict) -> dict:
    """``vs_placebo<b>_run_r2``: each tested space's unique share against its placebo."""
    from .engine import placebo_scores, unique_vs_placebo

    out = {}
    for b, name in enumerate(names):
        if name in job.settings.partition_null:
            placebos = placebo_scores(_placebo_designs(job, seed, sub, b, cache), Y,
                                      job.settings.batch_targets, memo=memo)
            out[f"vs_placebo{b}_run_r2"] = unique_vs_placebo(joint, placebos).astype(np.float32)
    return out


def _fit_partition(job: Job, unit: Unit, sub: str, Y: np.ndarray, cache: dict
                   ) -> tuple[dict, dict]:
    """Banded fits of a variance partition for one subject: the joint fit and every fit without
    one space (:func:`lib.engine.partition.needed_fits`), the reduced ones searching the joint
    fit's candidates with a zero for the left-out space, and for each tested space the joint
    fits with its conditional placebo; designs are shared by the unit's subjects (``cache``)."""
    from .engine import partition_scores

    names = [n for n, _, _ in partition_members(job, unit.seed)]
    memo: dict = {}     # this subject's inner-fold scores of each design
    fits = partition_scores(_partition_designs(job, unit.seed, sub, cache), Y, names,
                            job.settings.batch_targets, memo=memo)
    arrays, subsets = {}, list(fits)
    for i, res in enumerate(fits.values()):
        arrays[f"fit{i}_run_r2"] = res.run_r2.astype(np.float32)
        arrays[f"fit{i}_valid"] = res.valid
        if i == 0:
            arrays["split_run_r2"] = res.run_split.astype(np.float32)
            arrays["weights"] = res.weights.mean(0).astype(np.float32)
    arrays.update(_placebo_arrays(job, unit.seed, sub, names, fits[tuple(names)], Y, cache,
                                  memo))
    meta = dict(subject=sub, seed=unit.seed, subsets=[list(x) for x in subsets],
                runs=[[r.story, int(r.run)] for r in job.subject_runs(sub).itertuples()],
                summary=summary_names(job))
    return arrays, meta


# --------------------------------------------------------------------------- the job
def volume_job(manifest: pd.DataFrame, transcripts_dir, index: pd.DataFrame, out_dir,
             mask_img, settings: Settings, roi_labels=None, roi_names: dict | None = None
             ) -> VolumeJob:
    """The :class:`VolumeJob` of stage 05 (writes the mask -- a volume's or a mesh's, see
    :mod:`lib.geometry` -- next to the outputs for the units)."""
    from .cache import save_nifti, write_npz

    out_dir = Path(out_dir)
    runs = manifest[~manifest["excluded"]].sort_values(["subject", "story", "run"])
    if runs.empty:
        raise DataError("no scan left after exclusions")
    if not mask_array(mask_img).any():
        raise DataError("the brain mask is empty")
    mask_path = save_geometry(mask_img, out_dir)
    labels_path = None
    if isinstance(roi_labels, np.ndarray):        # a surface's ROIs x vertices membership
        labels_path = str(write_npz(out_dir / "roi_labels.npz", membership=roi_labels))
    elif roi_labels is not None:
        labels_path = str(roi_labels) if isinstance(roi_labels, (str, Path)) else \
            str(save_nifti(roi_labels, out_dir / "roi_labels.nii.gz"))
        if not Path(labels_path).exists():
            raise DataError(f"{labels_path}: ROI labels file not found")
    fm = FeatureMaps.of(index)
    stimulus = stimulus_groups({s: " ".join(read_transcript(Path(transcripts_dir) / f"{s}.tsv")
                                            .word.astype(str))
                                for s in sorted(runs.story.unique())})
    audio = {r.story: r.audio_path for r in runs.itertuples()
             if str(getattr(r, "audio_path", "") or "")}
    from .paths import Paths

    job = VolumeJob(settings=settings, runs=runs.reset_index(drop=True),
                    transcripts_dir=str(transcripts_dir), features=fm.features,
                    all_layers=fm.all_layers, out_dir=str(out_dir), surprisal=fm.surprisal,
                    spaces_cache=str(Paths.from_env().derived / "spaces"), audio=audio,
                    subject_fold=fm.subject_fold, stimulus=stimulus, mask_path=str(mask_path),
                    labels_path=labels_path, model_tags=fm.tags, roi_names=dict(roi_names or {}))
    labels_of(job, mask_of(job))   # a bad labels image fails here, before any unit runs
    return job
