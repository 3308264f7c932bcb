"""Stage 05: encoding models and brain scores, as units of work.

A *unit* fits one condition (``raw``, ``sft``, ``control``, ``wordrate``, ...; one SFT seed) for a
few subjects who heard the same stories with the same TRs: they share the features, the folds and
every decomposition (:func:`lib.ridge.prepare` once, :func:`lib.ridge.score` per subject), and each
subject's BOLD is read inside the unit, one subject at a time. A unit writes one result file per
subject (``units/<condition>_seed-<k>/<subject>.npz``) atomically, keyed by the content of its
inputs (features, BOLD, mask, labels) and the settings, so a rerun or a resumed run recomputes only
what is missing. A subject whose input is bad fails alone, with its file named; the others finish.

Per subject, all its runs are fitted together (:mod:`lib.ridge` decides the folds: leave one story
out, or contiguous blocks of story time with a gap when it heard one story, repeats held out
together). Targets: every voxel in the mask, the whole-brain mean BOLD per TR, the mean BOLD of each
ROI label. Each run's BOLD is z-scored over its kept TRs (runs differ in baseline). Next to every
score is its *chance* score: the same features circularly shifted in time by half the story
(:func:`lib.spaces.mismatch`), fitted and scored identically.

:func:`reduce` gathers the per-subject files into ``scores.csv`` (one row per subject, story, run,
condition, seed and target), ``voxel_scores.npz``, maps, the noise ceilings and the group
permutation tests (:mod:`lib.inference`).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import file_hash, is_fresh, key_of, write_npz, write_sidecar
from .data import DataError
from .inference import NullSpec
from .ridge import DEFAULT_ALPHAS, DEFAULT_DELAYS, EngineError, Layout, default_gap, prepare, score
from .spaces import design_matrix, tr_features, word_rate

ENGINE_VERSION = 3
SUMMARY = "whole_brain_mean"


@dataclass(frozen=True)
class Settings:
    """Stage-05 parameters (every one is part of a unit's cache key)."""
    delays: tuple = DEFAULT_DELAYS
    aggregation: str = "sum"
    alphas: tuple = tuple(DEFAULT_ALPHAS)
    n_folds: int = 5
    inner_folds: int = 4
    gap: int | None = None               # None: ridge.default_gap(delays)
    null: NullSpec = NullSpec()
    perm_conditions: tuple = ("raw", "sft")
    chance: bool = True
    backend: str = "numpy"
    device: str | None = None
    batch_targets: int = 20000

    @property
    def gap_trs(self) -> int:
        return default_gap(self.delays) if self.gap is None else int(self.gap)

    def key(self) -> str:
        d = asdict(self)
        d.pop("device"), d.pop("batch_targets"), d.pop("backend")
        return key_of("stage05", ENGINE_VERSION, d)


@dataclass(frozen=True)
class Unit:
    condition: str
    seed: int
    subjects: tuple


@dataclass
class Job:
    """Everything a unit needs (picklable: sent to Dask workers as it is)."""
    settings: Settings
    runs: pd.DataFrame                     # manifest rows in use
    transcripts_dir: str
    features: dict                         # (condition, seed) -> {story: activations path}
    all_layers: dict                       # (condition, seed) -> {story: all-layer path}
    mask_path: str
    labels_path: str | None
    out_dir: str
    model_tags: dict = field(default_factory=dict)

    def subject_runs(self, subject: str) -> pd.DataFrame:
        return self.runs[self.runs.subject == subject].sort_values(["story", "run"])

    def signature(self, subject: str) -> tuple:
        """Subjects with equal signatures share features, folds and decompositions."""
        r = self.subject_runs(subject)
        return tuple(zip(r.story, r.run.astype(int), r.n_trs.astype(int),
                         r.trim_start.astype(int), r.trim_end.astype(int)))

    def result_path(self, unit_cond: str, seed: int, subject: str) -> Path:
        return Path(self.out_dir) / "units" / f"{unit_cond}_seed-{seed}" / f"{subject}.npz"


def plan_units(job: Job, conditions: list[tuple[str, int]], subjects_per_unit: int = 8
               ) -> list[Unit]:
    """One unit per condition and group of at most ``subjects_per_unit`` subjects sharing a
    signature (:meth:`Job.signature`)."""
    groups: dict[tuple, list[str]] = {}
    for s in sorted(job.runs.subject.unique()):
        groups.setdefault(job.signature(s), []).append(s)
    units = []
    for cond, seed in conditions:
        for subs in groups.values():
            for i in range(0, len(subs), subjects_per_unit):
                units.append(Unit(cond, int(seed), tuple(subs[i:i + subjects_per_unit])))
    return units


# --------------------------------------------------------------------------- inputs
_HASHES: dict[tuple, str] = {}


def content_hash(path: str | Path) -> str:
    """sha256 of a file, memoised per (path, size, mtime) within the process (the key itself
    holds only content hashes)."""
    p = Path(path)
    st = p.stat()
    k = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if k not in _HASHES:
        _HASHES[k] = file_hash(p)
    return _HASHES[k]


def _mask(job: Job) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(job.mask_path).get_fdata()) > 0


def _labels(job: Job, mask: np.ndarray):
    if not job.labels_path:
        return None, []
    import nibabel as nib

    lab = np.asarray(nib.load(job.labels_path).get_fdata())
    if lab.shape != mask.shape:
        raise DataError(f"{job.labels_path}: labels grid {lab.shape} != mask grid {mask.shape}")
    lab = lab[mask].astype(int)
    ids = sorted(set(lab[lab > 0].tolist()))
    if not ids:
        raise DataError(f"{job.labels_path}: no label > 0 inside the mask")
    return lab, ids


def summary_names(job: Job) -> list[str]:
    _, ids = _labels(job, _mask(job))
    return [SUMMARY] + [f"roi-{i}" for i in ids]


def _run_features(job: Job, condition: str, seed: int, row, layer: int | None = None):
    """(n_trs, d) per-TR features of one run, before delays."""
    from .features import load_activations
    from .transcripts import read_transcript

    tr_file = Path(job.transcripts_dir) / f"{row.story}.tsv"
    words = read_transcript(tr_file)
    word_trs = words["tr"].to_numpy(int)
    n_trs = int(row.n_trs)
    if condition == "wordrate":
        return word_rate(word_trs, n_trs)
    paths = (job.all_layers if layer is not None else job.features)[(condition, seed)]
    if row.story not in paths:
        raise DataError(f"no {condition} activations for story {row.story!r} (seed {seed})")
    acts = load_activations(paths[row.story])
    if layer is not None:
        acts = acts[layer]
    if len(acts) != len(words):
        raise DataError(f"{paths[row.story]}: {len(acts)} word activations but {tr_file} has "
                        f"{len(words)} words")
    return tr_features(acts, word_trs, n_trs, job.settings.aggregation,
                       words["onset"].to_numpy(float) + float(row.audio_start_s), float(row.tr))


def _kept(row) -> slice:
    return slice(int(row.trim_start), int(row.n_trs) - int(row.trim_end))


def design_inputs(job: Job, condition: str, seed: int, subject: str, mismatched: bool = False,
                  layer: int | None = None):
    """(X, layout) of a subject's runs for one condition."""
    rows = list(job.subject_runs(subject).itertuples())
    Xs = [design_matrix(_run_features(job, condition, seed, r, layer), _kept(r),
                        job.settings.delays, mismatched) for r in rows]
    layout = Layout.of_runs([len(x) for x in Xs], [r.story for r in rows])
    return np.vstack(Xs), layout


def run_targets(job: Job, row, mask: np.ndarray, labels) -> np.ndarray:
    """(n_kept_trs, n_voxels + n_summary) targets of one run: BOLD z-scored over its kept TRs,
    then the whole-brain mean and the ROI means of that."""
    from .data import load_bold
    from .inference import zscore_time

    Y = load_bold(row.bold_path, mask)
    if len(Y) != int(row.n_trs):
        raise DataError(f"{row.bold_path}: {len(Y)} TRs but the manifest says {row.n_trs}")
    Y = zscore_time(Y[_kept(row)]).astype(np.float32)
    extra = [Y.mean(1, keepdims=True)]
    if labels is not None and labels[0] is not None:
        lab, ids = labels
        extra += [Y[:, lab == i].mean(1, keepdims=True) for i in ids]
    return np.hstack([Y] + extra)


def subject_targets(job: Job, subject: str, mask: np.ndarray, labels) -> np.ndarray:
    """A subject's runs' targets (:func:`run_targets`), stacked in story, run order."""
    return np.vstack([run_targets(job, r, mask, labels)
                      for r in job.subject_runs(subject).itertuples()])


def _input_key(job: Job, condition: str, seed: int, subject: str) -> str:
    rows = job.subject_runs(subject)
    feats = []
    if condition != "wordrate":
        for src in (job.features, job.all_layers):
            paths = src.get((condition, seed), {})
            feats += [(s, content_hash(paths[s])) for s in sorted(set(rows.story)) if s in paths]
    trs = [content_hash(Path(job.transcripts_dir) / f"{s}.tsv") for s in sorted(set(rows.story))]
    bold = [(r.story, int(r.run), content_hash(r.bold_path), int(r.trim_start), int(r.trim_end))
            for r in rows.itertuples()]
    return key_of(job.settings.key(), condition, seed, feats, trs, bold,
                  content_hash(job.mask_path),
                  content_hash(job.labels_path) if job.labels_path else "")


# --------------------------------------------------------------------------- one unit
def fit_unit(job: Job, unit: Unit, progress=None) -> list[dict]:
    """Fit ``unit`` for each of its subjects (cached ones are skipped). Returns one status dict
    per subject: ``{"subject", "status": "cached"|"fitted"|"failed", "error"}``."""
    st = job.settings
    mask = _mask(job)
    labels = _labels(job, mask)
    designs: dict[bool, object] = {}
    layer_designs: dict[int, object] = {}
    out = []
    for sub in unit.subjects:
        path = job.result_path(unit.condition, unit.seed, sub)
        try:
            key = _input_key(job, unit.condition, unit.seed, sub)
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
                             device=st.device, source=f"{unit.condition} seed {unit.seed}")
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
    if (unit.condition, unit.seed) in job.all_layers:
        arrays["layer_scores"] = _layer_scores(job, unit, sub, Y[:, -n_sum:], layer_designs)
    D = designs[False]
    meta = dict(subject=sub, condition=unit.condition, seed=unit.seed,
                runs=[[r.story, int(r.run)] for r in job.subject_runs(sub).itertuples()],
                scheme=D.scheme, gap=D.gap, n_folds=len(D.folds),
                edge_fraction=res.edge_fraction, edge_fraction_summary=_edge(res, D, n_sum),
                n_invalid=res.n_invalid, summary=summary_names(job),
                warnings=[str(w.message) for w in caught])
    return arrays, meta


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


# --------------------------------------------------------------------------- null plans
def null_plans(job: Job, condition: str, seeds: list[int], subject: str,
               cache: dict | None = None) -> list:
    """The subject's NullPlans for ``condition`` (one per seed), rebuilt from its saved alphas."""
    from .inference import NullPlan

    st = job.settings
    mask = _mask(job)
    Y = subject_targets(job, subject, mask, _labels(job, mask))
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
def _synthetic_truth(manifest) -> Path | None:
    first = Path(manifest.iloc[0]["bold_path"])
    return next((p / "derivatives" / "synthetic-truth" for p in first.parents
                 if (p / "derivatives" / "synthetic-truth").exists()), None)


def brain_mask(manifest, mask: str | None = "auto"):
    """The mask image: a path, or ``auto`` = the dataset's own brain mask when it ships one
    (narratives-mini), else nilearn's MNI152 brain mask resampled to the BOLD grid."""
    import nibabel as nib

    if mask and mask != "auto":
        if not Path(mask).exists():
            raise DataError(f"{mask}: mask file not found")
        return nib.load(str(mask))
    truth = _synthetic_truth(manifest)
    if truth is not None:
        return nib.load(str(truth / "brain_mask.nii.gz"))
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import index_img, resample_to_img

    ref = index_img(str(manifest.iloc[0]["bold_path"]), 0)
    return resample_to_img(load_mni152_brain_mask(), ref, interpolation="nearest",
                           force_resample=True, copy_header=True)


def roi_labels_for(manifest, roi_labels="auto"):
    """A labels image path, or ``auto``: the planted mask of a synthetic dataset (label 1), none
    for real data."""
    if roi_labels in (None, "", "none", "None"):
        return None
    if roi_labels != "auto":
        return roi_labels
    truth = _synthetic_truth(manifest)
    return truth / "planted_mask.nii.gz" if truth is not None else None


class UnitsFailed(DataError):
    """Some units failed on bad input; the others' results are kept."""


def make_job(manifest: pd.DataFrame, transcripts_dir, index: pd.DataFrame, out_dir,
             mask_img, settings: Settings, roi_labels=None) -> Job:
    """The :class:`Job` of stage 05 (writes the mask next to the outputs for the units)."""
    from .cache import save_nifti

    out_dir = Path(out_dir)
    runs = manifest[~manifest["excluded"]].sort_values(["subject", "story", "run"])
    if runs.empty:
        raise DataError("no scan left after exclusions")
    if not (np.asarray(mask_img.get_fdata()) > 0).any():
        raise DataError("the brain mask is empty")
    mask_path = save_nifti(mask_img, out_dir / "mask.nii.gz")
    labels_path = None
    if roi_labels is not None:
        labels_path = str(roi_labels) if isinstance(roi_labels, (str, Path)) else \
            str(save_nifti(roi_labels, out_dir / "roi_labels.nii.gz"))
        if not Path(labels_path).exists():
            raise DataError(f"{labels_path}: ROI labels file not found")
    feats, layers, tags = {}, {}, {}
    for r in index.itertuples():
        k = (r.condition, int(r.seed))
        feats.setdefault(k, {})[r.story] = r.path
        tags[k] = r.model_tag
        if getattr(r, "all_layers_path", ""):
            layers.setdefault(k, {})[r.story] = r.all_layers_path
    job = Job(settings, runs.reset_index(drop=True), str(transcripts_dir), feats, layers,
              str(mask_path), labels_path, str(out_dir), tags)
    _labels(job, _mask(job))   # a bad labels image fails here, before any unit runs
    return job


def run_stage(job: Job, baselines=("wordrate",), fdr_q: float = 0.05, re_min_subjects: int = 6,
              re_n_perm: int = 1000, client=None, subjects_per_unit: int = 8,
              progress: bool = True) -> dict:
    """Stage 05: fit every unit (serially, or on a Dask ``client``), then reduce.

    Writes ``scores.csv``, ``layer_scores.csv``, ``noise_ceiling.csv``, ``voxel_scores.npz``,
    ``group.npz``, ``group_tests.csv`` and group maps under ``maps/``. Units that fail on bad input
    are reported together (:class:`UnitsFailed`) after every other unit finished.
    """
    from . import reduction as red
    from .cluster import map_units

    st = job.settings
    conditions = sorted(job.features) + [(b, 0) for b in baselines]
    units = plan_units(job, conditions, subjects_per_unit)
    status = map_units(fit_unit, job, units, client=client, desc="encoding units",
                       progress=progress)
    failed = [(u, s) for u, sts in zip(units, status) for s in sts if s["status"] == "failed"]
    if failed:
        lines = "\n".join(f"  {u.condition} seed {u.seed} {s['subject']}: {s['error']}"
                          for u, s in failed)
        raise UnitsFailed(f"{len(failed)} unit fits failed (the others are saved):\n{lines}")
    synthetic = bool(job.runs["synthetic_bold"].any())
    scores, layers, voxels = red.score_tables(job, conditions, synthetic)
    nc, nc_maps = red.noise_ceilings(job, synthetic, fdr_q)
    group = {}
    import nibabel as nib

    mask_img = nib.load(job.mask_path)
    n_sub = job.runs.subject.nunique()
    for cond in st.perm_conditions:
        seeds = sorted(s for c, s in job.features if c == cond)
        if not seeds or st.null.n_perm <= 0:
            continue
        g = red.group_tests(job, cond, seeds, fdr_q, client)
        if n_sub >= re_min_subjects:
            g.update({f"re_{k}": v for k, v in
                      red.random_effects(job, cond, seeds, n_perm=re_n_perm).items()})
        group[cond] = g
        red.save_map(g["score"], mask_img, Path(job.out_dir) / "maps" / f"group_{cond}_r.nii.gz")
        red.save_map(np.where(g["fdr"], g["score"], 0), mask_img,
                     Path(job.out_dir) / "maps" / f"group_{cond}_r_fdr.nii.gz")
    if {"sft", "raw"} <= set(group) and n_sub >= re_min_subjects:
        seeds_of = {c: sorted(s for cc, s in job.features if cc == c) for c in ("sft", "raw")}
        group["delta"] = {f"re_{k}": v for k, v in red.random_effects(
            job, "sft", seeds_of["sft"], b="raw", seeds_b=seeds_of["raw"],
            n_perm=re_n_perm).items()}
    tests = red.write_outputs(job.out_dir, scores, layers, voxels, nc, nc_maps, group)
    return dict(scores=scores, layer_scores=layers, noise_ceiling=nc, group=group,
                group_tests=tests,
                units=pd.DataFrame([dict(condition=u.condition, seed=u.seed, **s)
                                    for u, sts in zip(units, status) for s in sts]))
