"""Stage 05: encoding models and brain scores, as units of work.

A *unit* fits one condition (``raw``, ``sft``, ``control``, ``word_rate``, ...; one SFT seed) for a
few subjects who heard the same stories with the same TRs: they share the features, the folds and
every decomposition (:func:`lib.engine.ridge.prepare` once, :func:`lib.engine.ridge.score` per subject), and each
subject's BOLD is read inside the unit, one subject at a time. A unit writes one result file per
subject (``units/<condition>_seed-<k>/<subject>.npz``) atomically, keyed by the content of its
inputs (features, BOLD, mask, labels) and the settings, so a rerun or a resumed run recomputes only
what is missing. A subject whose input is bad fails alone, with its file named; the others finish.

Per subject, all its runs are fitted together (:mod:`lib.engine.ridge` decides the folds: leave one story
out, or contiguous blocks of story time with a gap when it heard one story, repeats held out
together). Targets: every voxel in the mask, the whole-brain mean BOLD per TR, the mean BOLD of each
ROI label. Each run's BOLD is z-scored over its kept TRs (runs differ in baseline). Next to every
score is its *chance* score: the same features circularly shifted in time by half the story
(:func:`lib.spaces.mismatch`), fitted and scored identically.

:func:`reduce` gathers the per-subject files into ``scores.csv`` (one row per subject, story, run,
condition, seed and target), ``voxel_scores.npz``, maps, the noise ceilings and the group
permutation tests (:mod:`lib.engine.inference`).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import is_fresh, write_npz, write_sidecar
from .data import DataError
from .job import (Job, Settings, Unit, design_inputs, input_key, labels_of, mask_of,
                  plan_units, run_targets, score_blocks_of, subject_targets, summary_names)
from .engine.ridge import EngineError, prepare, score
from .features import FeatureMaps
from .transcripts import read_transcript, stimulus_groups
from .geometry import (brain_mask, mask_array, named_rois,  # noqa: F401  (re-exported)
                       roi_labels_for, save_geometry)

__all__ = ["Job", "Settings", "Unit", "fit_unit", "make_job", "brain_mask", "named_rois",
           "roi_labels_for", "null_plans", "load_result", "plan_units", "run_targets",
           "subject_targets", "summary_names", "UnitsFailed"]


# --------------------------------------------------------------------------- one unit
def fit_unit(job: Job, unit: Unit, progress=None) -> list[dict]:
    """Fit ``unit`` for each of its subjects (cached ones are skipped). Returns one status dict
    per subject: ``{"subject", "status": "cached"|"fitted"|"failed", "error"}``."""
    mask = mask_of(job)
    labels = labels_of(job, mask)
    designs: dict[bool, object] = {}
    layer_designs: dict[int, object] = {}
    out = []
    for sub in unit.subjects:
        path = job.result_path(unit.condition, unit.seed, sub)
        try:
            key = input_key(job, unit.condition, unit.seed, sub)
            if is_fresh(path, key):
                out.append(dict(subject=sub, status="cached", error=""))
                continue
            Y = subject_targets(job, sub, mask, labels)
            arrays, meta = _fit_subject(job, unit, sub, Y, designs, layer_designs)
            write_npz(path, **arrays)
            write_sidecar(path, key, **meta)
            out.append(dict(subject=sub, status="fitted", error=""))
        except (DataError, EngineError, OSError) as e:
            out.append(dict(subject=sub, status="failed", error=str(e)))
        if progress is not None:
            progress(1)
    return out


def _design(job: Job, unit: Unit, sub: str, cache: dict, key, mismatched=False, layer=None):
    if key not in cache:
        st = job.settings
        X, layout = design_inputs(job, unit.condition, unit.seed, sub, mismatched, layer)
        cache[key] = prepare(X, layout, gap=st.gap_trs, n_folds=st.n_folds,
                             inner_folds=st.inner_folds, alphas=st.alphas, backend=st.backend,
                             device=st.device, source=f"{unit.condition} seed {unit.seed}",
                             score_blocks=score_blocks_of(job, sub))
    return cache[key]


def _fit_subject(job: Job, unit: Unit, sub: str, Y: np.ndarray, designs: dict,
                 layer_designs: dict) -> tuple[dict, dict]:
    st = job.settings
    n_sum = len(summary_names(job))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = score(_design(job, unit, sub, designs, False), Y, st.batch_targets,
                    source=f"{sub} {unit.condition}")
    arrays = dict(run_scores=res.run_scores, fold_alphas=res.alphas.astype(np.float32),
                  valid=res.valid, concat_r=res.concat_r)
    if st.chance:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ch = score(_design(job, unit, sub, designs, True, mismatched=True), Y,
                       st.batch_targets)
        arrays["chance_run_scores"] = ch.run_scores
    if (unit.condition, unit.seed) in job.all_layers and unit.condition in st.layer_conditions:
        arrays["layer_scores"] = _layer_scores(job, unit, sub, Y[:, -n_sum:], layer_designs)
    D = designs[False]
    meta = dict(subject=sub, condition=unit.condition, seed=unit.seed,
                runs=[[r.story, int(r.run)] for r in job.subject_runs(sub).itertuples()],
                scheme=D.scheme, gap=D.gap, n_folds=len(D.folds),
                edge_fraction=res.edge_fraction, edge_fraction_summary=_edge(res, D, n_sum),
                n_invalid=res.n_invalid, summary=summary_names(job),
                warnings=_meaningful(caught, res))
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
    from .features import load_activations

    first = next(iter(job.all_layers[(unit.condition, unit.seed)].values()))
    n_layers = load_activations(first).shape[0]
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for layer in range(n_layers):
            D = _design(job, unit, sub, cache, layer, layer=layer)
            out.append(score(D, Ysum, job.settings.batch_targets).run_scores)
    return np.stack(out).astype(np.float32)


# --------------------------------------------------------------------------- partition units
PARTITION = "partition"


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
    return dict(gap=st.gap_trs, n_folds=st.n_folds, inner_folds=st.inner_folds,
                alphas=st.alphas, n_iter=st.partition_n_iter, backend=st.backend,
                device=st.device, score_blocks=score_blocks_of(job, sub))


def _partition_designs(job: Job, seed: int, sub: str, cache: dict) -> list:
    """The joint fit's designs, one per band weighting (:func:`lib.engine.partition.band_weights`
    nests every reduced fit's candidates in them); shared by subjects with the same features."""
    from .engine.partition import banded_prepare

    key = job.signature(sub)
    if key not in cache:
        cache[key] = banded_prepare(*_partition_inputs(job, seed, sub, cache),
                                    **_prepare_kw(job, sub))
    return cache[key]


def _placebo_designs(job: Job, seed: int, sub: str, band: int, cache: dict) -> list:
    """Per shift, the joint fit's designs with space ``band`` replaced by its conditional
    placebo (:func:`lib.engine.partition.placebo_band_designs`); shared like the joint designs."""
    from .engine.partition import placebo_band_designs

    key = (job.signature(sub), "placebo", band)
    if key not in cache:
        Xs, layout = _partition_inputs(job, seed, sub, cache)
        cache[key] = placebo_band_designs(Xs, band, layout, n_shifts=PARTITION_SHIFTS,
                                          joint=_partition_designs(job, seed, sub, cache),
                                          **_prepare_kw(job, sub))
    return cache[key]


def _placebo_arrays(job: Job, seed: int, sub: str, names: list[str], joint, Y,
                    cache: dict, memo: dict) -> dict:
    """``vs_placebo<b>_run_r2``: each tested space's unique share against its placebo."""
    from .engine.partition import placebo_scores, unique_vs_placebo

    out = {}
    for b, name in enumerate(names):
        if name in job.settings.partition_null:
            placebos = placebo_scores(_placebo_designs(job, seed, sub, b, cache), Y,
                                      job.settings.batch_targets, memo=memo)
            out[f"vs_placebo{b}_run_r2"] = unique_vs_placebo(joint, placebos).astype(np.float32)
    return out


def fit_partition_unit(job: Job, unit: Unit, progress=None) -> list[dict]:
    """Banded fits of a variance partition for each subject of ``unit``: the joint fit and every
    fit without one space (:func:`lib.engine.partition.needed_fits`), the reduced ones searching
    the joint fit's candidates with a zero for the left-out space, and for each tested space the
    joint fits with its conditional placebo; designs are shared by the unit's subjects."""
    from .engine.partition import partition_scores

    mask = mask_of(job)
    labels = labels_of(job, mask)
    cache: dict = {}
    out = []
    for sub in unit.subjects:
        path = job.result_path(PARTITION, unit.seed, sub)
        try:
            members = partition_members(job, unit.seed)
            key = input_key(job, PARTITION, unit.seed, sub,
                            extra=[("scheme", PARTITION_SCHEME)] +
                            [input_key(job, c, sd, sub) for _, c, sd in members])
            if is_fresh(path, key):
                out.append(dict(subject=sub, status="cached", error=""))
                continue
            Y = subject_targets(job, sub, mask, labels)
            names = [n for n, _, _ in members]
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
            arrays.update(_placebo_arrays(job, unit.seed, sub, names, fits[tuple(names)], Y,
                                          cache, memo))
            write_npz(path, **arrays)
            write_sidecar(path, key, subject=sub, seed=unit.seed,
                          subsets=[list(x) for x in subsets],
                          runs=[[r.story, int(r.run)] for r in job.subject_runs(sub).itertuples()],
                          summary=summary_names(job))
            out.append(dict(subject=sub, status="fitted", error=""))
        except (DataError, EngineError, OSError) as e:
            out.append(dict(subject=sub, status="failed", error=str(e)))
    return out


# --------------------------------------------------------------------------- null plans
def null_plans(job: Job, condition: str, seeds: list[int], subject: str,
               cache: dict | None = None) -> list:
    """The subject's NullPlans for ``condition`` (one per seed), rebuilt from its saved alphas."""
    from .engine.inference import NullPlan

    st = job.settings
    mask = mask_of(job)
    Y = subject_targets(job, subject, mask, labels_of(job, mask))
    plans = []
    for seed in seeds:
        unit = Unit(condition, seed, (subject,))
        D = _design(job, unit, subject, {} if cache is None else cache,
                    (condition, seed, job.signature(subject)))
        with np.load(job.result_path(condition, seed, subject)) as z:
            best = np.searchsorted(D.alphas, z["fold_alphas"].astype(np.float64) * (1 - 1e-6))
            valid = z["valid"]
        best = np.where(valid[None], np.clip(best, 0, len(D.alphas) - 1), -1)
        plans.append(NullPlan(D, Y, valid, best, st.null, seed=0,
                              batch_targets=st.batch_targets))
    return plans


def load_result(job: Job, condition: str, seed: int, subject: str) -> tuple[dict, dict]:
    path = job.result_path(condition, seed, subject)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    return arrays, meta


def with_settings(job: Job, **changes) -> Job:
    return replace(job, settings=replace(job.settings, **changes))


# --------------------------------------------------------------------------- the stage
class UnitsFailed(DataError):
    """Some units failed on bad input; the others' results are kept."""


def make_job(manifest: pd.DataFrame, transcripts_dir, index: pd.DataFrame, out_dir,
             mask_img, settings: Settings, roi_labels=None, roi_names: dict | None = None
             ) -> Job:
    """The :class:`Job` of stage 05 (writes the mask -- a volume's or a mesh's, see
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

    job = Job(settings, runs.reset_index(drop=True), str(transcripts_dir), fm.features,
              fm.all_layers, str(mask_path), labels_path, str(out_dir), fm.tags, fm.surprisal,
              str(Paths.from_env().derived / "spaces"), audio, dict(roi_names or {}),
              fm.subject_fold, stimulus)
    labels_of(job, mask_of(job))   # a bad labels image fails here, before any unit runs
    return job
