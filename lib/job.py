"""What a stage-05 unit needs: its settings, the job, and how it reads features and BOLD.

A :class:`Job` is plain data (picklable: Dask ships it to workers once). Features of a run come
from :func:`lib.spaces.run_features` (LM activations, word-level spaces, surprisal, audio); BOLD
targets of a run are every voxel in the mask, z-scored over the run's kept TRs, then the
whole-brain mean and the ROI means of that. A unit's cache key holds only content hashes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import file_hash, key_of
from .data import DataError
from .engine import (DEFAULT_ALPHAS, DEFAULT_DELAYS, Layout, NullSpec, Splitter, default_gap,
                     prepare)
from .spaces import design_matrix

ENGINE_VERSION = 7     # 7: float64 eigh in torch's LAPACK (6: all penalties at once), float noise
                       # (5: the chance design shifts the TRs before the trim too)
SUMMARY = "whole_brain_mean"
PARTITION = "partition"     # the condition name of variance-partition units


@dataclass(frozen=True)
class Settings:
    """Stage-05 parameters (every one is part of a unit's cache key)."""
    delays: tuple = DEFAULT_DELAYS
    aggregation: str = "sum"
    alphas: tuple = tuple(DEFAULT_ALPHAS)
    n_folds: int = 5
    inner_folds: int = 4
    gap: int | None = None               # None: ridge.default_gap(delays, tr)
    tr: float = field(kw_only=True)      # seconds (required): the gap's story time is
                                         # converted at it
    null: NullSpec = NullSpec()
    perm_conditions: tuple = ("raw", "sft")
    chance: bool = True
    spaces: tuple = ("word_rate",)        # feature spaces fitted alone beside the LMs
    partition: tuple = ()                 # spaces fitted jointly for variance partitioning
    partition_n_iter: int = 20            # band weightings tried by the random search
    partition_null: tuple = ()            # spaces whose unique R^2 is tested across subjects
    layer_conditions: tuple = ("raw", "sft")   # conditions whose every layer is scored
    backend: str = "numpy"
    device: str | None = None
    batch_targets: int = 20000

    @classmethod
    def from_params(cls, *, tr: float, alphas=(), n_perm: int = 1000, null_method: str = "block",
                    perm_block: int | None = None, feature_spaces=("word_rate",),
                    layer_profile_conditions=("raw", "sft"), ridge_backend: str = "numpy",
                    device: str | None = "auto", **params) -> "Settings":
        """The settings from stage 05's notebook parameters (lists become tuples, an empty
        ``alphas`` the default grid, ``device: auto`` None); an unknown name is an error."""
        known = {f.name for f in fields(cls)} - {"null", "spaces", "layer_conditions", "backend"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise TypeError(f"unknown stage-05 parameters {unknown}; known: {sorted(known)}")
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        return cls(tr=tr, alphas=tuple(alphas) or tuple(DEFAULT_ALPHAS),
                   null=NullSpec.for_tr(tr, perm_block, n_perm=n_perm, method=null_method),
                   spaces=tuple(feature_spaces), layer_conditions=tuple(layer_profile_conditions),
                   backend=ridge_backend, device=None if device == "auto" else device, **params)

    @property
    def gap_trs(self) -> int:
        return default_gap(self.delays, self.tr) if self.gap is None else int(self.gap)

    def key(self) -> str:
        d = asdict(self)
        d.pop("device"), d.pop("batch_targets"), d.pop("backend")
        return key_of("stage05", ENGINE_VERSION, d)


@dataclass
class JobBase:
    """What every kind of stage-05 job holds (plain data, picklable: Dask ships it to workers
    once), and the unit protocol that :mod:`lib.units` runs: ``signature``, ``unit_key`` and
    ``fit``, which each kind of target defines (:class:`lib.encoding.VolumeJob`,
    :class:`lib.matrix_encoding.MatrixJob`)."""
    settings: object
    runs: pd.DataFrame                     # manifest rows in use
    transcripts_dir: str
    features: dict                         # (condition, seed) -> {story: activations path}
    all_layers: dict                       # (condition, seed) -> {story: all-layer path}
    out_dir: str
    surprisal: dict = field(default_factory=dict)     # (lm condition, seed) -> {story: path}
    spaces_cache: str = ""                            # word-level spaces' cache folder
    audio: dict = field(default_factory=dict)         # story -> <story>_audio.wav
    subject_fold: dict = field(default_factory=dict)  # subject -> its fine-tuned models' fold
                                                      # (empty: one model per condition)
    stimulus: dict = field(default_factory=dict)      # story -> stimulus (pieman, piemanpni: one)

    def subject_runs(self, subject: str) -> pd.DataFrame:
        return self.runs[self.runs.subject == subject].sort_values(["story", "run"])

    def n_stimuli(self, subject: str) -> int:
        """How many different stimuli ``subject`` heard (pieman and piemanpni are one)."""
        return len({self.stimulus.get(s, s) for s in self.subject_runs(subject).story})

    def result_path(self, unit_cond: str, seed: int, subject: str) -> Path:
        return Path(self.out_dir) / "units" / f"{unit_cond}_seed-{seed}" / f"{subject}.npz"

    def signature(self, subject: str) -> tuple:
        """Subjects with equal signatures share features, folds and decompositions."""
        raise NotImplementedError

    def unit_key(self, condition: str, seed: int, subject: str) -> str:
        """The content hash of everything ``subject``'s result of ``condition`` depends on."""
        raise NotImplementedError

    def fit(self, unit, subjects: list[str]):
        """``(subject, (arrays, meta) or the exception it raised)`` for each of ``subjects``."""
        raise NotImplementedError


@dataclass(kw_only=True)
class Job(JobBase):
    """A job over BOLD volumes or surface vertices: the mask and ROI labels say where the
    targets live (:mod:`lib.geometry`)."""
    mask_path: str
    labels_path: str | None
    model_tags: dict = field(default_factory=dict)
    roi_names: dict = field(default_factory=dict)     # ROI id -> name (targets roi-<name>)

    def signature(self, subject: str) -> tuple:
        r = self.subject_runs(subject)
        return tuple(zip(r.story, r.run.astype(int), r.n_trs.astype(int),
                         r.trim_start.astype(int), r.trim_end.astype(int)))


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


def mask_of(job: Job) -> np.ndarray:
    """The boolean mask of the job's targets (3-D voxels, or 1-D mesh vertices)."""
    from .geometry import load_geometry, mask_array

    return mask_array(load_geometry(job.mask_path))


def labels_of(job: Job, mask: np.ndarray):
    """(membership (n_rois, n_mask_voxels) bool, ROI ids) of the job's labels image: a 3-D image
    of integer labels, or a 4-D image with one mask per volume (ROIs that overlap, e.g. the
    planted region and the atlas's superior temporal gyrus; id = volume number + 1)."""
    if not job.labels_path:
        return None, []
    if job.labels_path.endswith(".npz"):            # a surface: ROIs x vertices membership
        with np.load(job.labels_path) as z:
            memb = z["membership"].astype(bool)
        if memb.shape[1] != mask.size:
            raise DataError(f"{job.labels_path}: {memb.shape[1]} vertices, the mesh has {mask.size}")
        memb = memb[:, mask]
        ids = [k + 1 for k in range(len(memb)) if memb[k].any()]
        if not ids:
            raise DataError(f"{job.labels_path}: no ROI has a vertex inside the mask")
        return memb[[i - 1 for i in ids]], ids
    import nibabel as nib

    lab = np.asarray(nib.load(job.labels_path).dataobj)
    if lab.shape[:3] != mask.shape:
        raise DataError(f"{job.labels_path}: labels grid {lab.shape[:3]} != mask grid {mask.shape}")
    if lab.ndim == 4:
        memb = np.stack([lab[..., k][mask] > 0 for k in range(lab.shape[3])])
        ids = [k + 1 for k in range(lab.shape[3]) if memb[k].any()]
        memb = memb[[i - 1 for i in ids]]
    else:
        lab = lab[mask].astype(int)
        ids = sorted(set(lab[lab > 0].tolist()))
        memb = np.stack([lab == i for i in ids]) if ids else np.zeros((0, mask.sum()), bool)
    if not ids:
        raise DataError(f"{job.labels_path}: no label > 0 inside the mask")
    return memb, ids


def summary_names(job: Job) -> list[str]:
    _, ids = labels_of(job, mask_of(job))
    return [SUMMARY] + [f"roi-{job.roi_names.get(i, i)}" for i in ids]


def condition_features(job: JobBase, condition: str, seed: int, row, layer: int | None = None):
    """(n_trs, d) per-TR features of one run for a condition (an LM's activations, a space of
    :data:`lib.spaces.SPACES`, ``surprisal:<lm>``), before delays."""
    from .features import story_path
    from .spaces import run_features as features_of_run

    lm = (job.all_layers if layer is not None else job.features).get((condition, seed), {})
    fold = job.subject_fold.get(row.subject)
    return features_of_run(
        condition, row, Path(job.transcripts_dir) / f"{row.story}.tsv",
        aggregation=job.settings.aggregation, activations=story_path(lm, row.story, fold),
        layer=layer, surprisal=story_path(job.surprisal.get((condition.split(":", 1)[-1], seed),
                                                            {}), row.story, fold),
        cache_root=job.spaces_cache, audio=job.audio.get(row.story))


def kept_slice(row) -> slice:
    return slice(int(row.trim_start), int(row.n_trs) - int(row.trim_end))


def design_inputs(job: Job, condition: str, seed: int, subject: str, mismatched: bool = False,
                  layer: int | None = None):
    """(X, layout) of a subject's runs for one condition."""
    rows = list(job.subject_runs(subject).itertuples())
    Xs = [design_matrix(condition_features(job, condition, seed, r, layer), kept_slice(r),
                        job.settings.delays, mismatched) for r in rows]
    # folds and null reorderings follow the stimulus: two names for one recording are one story
    layout = Layout.of_runs([len(x) for x in Xs],
                            [job.stimulus.get(r.story, r.story) for r in rows])
    return np.vstack(Xs), layout


def design(job: JobBase, condition: str, seed: int, subject: str, cache: dict,
           mismatched: bool = False, layer: int | None = None):
    """The prepared design (:func:`lib.engine.prepare`) of ``condition`` -- one layer of it, or
    its chance design with ``mismatched`` -- for ``subject``'s runs, with the subject's folds
    (:func:`splitter`); kept in ``cache`` for the subjects with the same signature."""
    key = (condition, seed, mismatched, layer, job.signature(subject))
    if key not in cache:
        st = job.settings
        X, layout = design_inputs(job, condition, seed, subject, mismatched, layer)
        cache[key] = prepare(X, layout, splitter(job, subject), alphas=st.alphas,
                             backend=st.backend, device=st.device,
                             source=f"{condition} seed {seed}")
    return cache[key]


def layer_designs(job: JobBase, condition: str, seed: int, subject: str, cache: dict) -> list:
    """:func:`design` of every layer of the condition's all-layer activations."""
    from .features import load_activations

    first = next(iter(job.all_layers[(condition, seed)].values()))
    n_layers = load_activations(first).shape[0]
    return [design(job, condition, seed, subject, cache, layer=k) for k in range(n_layers)]


def load_result(job: JobBase, condition: str, seed: int, subject: str) -> tuple[dict, dict]:
    """A unit's saved arrays for ``subject`` and their sidecar (:mod:`lib.units`)."""
    import json

    path = job.result_path(condition, seed, subject)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    return arrays, meta


def run_targets(job: Job, row, mask: np.ndarray, labels) -> np.ndarray:
    """(n_kept_trs, n_voxels + n_summary) targets of one run: BOLD z-scored over its kept TRs,
    then the whole-brain mean and the ROI means of that."""
    from .data import load_bold
    from .engine import zscore_time

    Y = load_bold(row.bold_path, mask)
    if len(Y) != int(row.n_trs):
        raise DataError(f"{row.bold_path}: {len(Y)} TRs but the manifest says {row.n_trs}")
    Y = zscore_time(Y[kept_slice(row)]).astype(np.float32)
    extra = [Y.mean(1, keepdims=True)]
    if labels is not None and labels[0] is not None:
        memb, _ = labels
        extra += [Y[:, m].mean(1, keepdims=True) for m in memb]
    return np.hstack([Y] + extra)


#: the targets of the last subjects read, at most one unit's worth (reading a gzipped BOLD run is
#: most of a small unit's time; units are ordered so that consecutive ones share subjects)
_TARGETS: dict = {}
TARGETS_KEPT = 8


def subject_targets(job: Job, subject: str, mask: np.ndarray, labels) -> np.ndarray:
    """A subject's runs' targets (:func:`run_targets`), stacked in story, run order."""
    rows = list(job.subject_runs(subject).itertuples())
    key = (subject, job.mask_path, job.labels_path,
           tuple((r.bold_path, int(r.trim_start), int(r.trim_end)) for r in rows))
    if key not in _TARGETS:
        while len(_TARGETS) >= TARGETS_KEPT:
            _TARGETS.pop(next(iter(_TARGETS)))
        _TARGETS[key] = np.vstack([run_targets(job, r, mask, labels) for r in rows])
    return _TARGETS[key]


def score_blocks_of(job: Job, subject: str) -> int:
    """``n_folds`` when ``subject`` heard several stimuli while another analysed subject heard
    one: its held-out stories are then scored as the mean r over ``n_folds`` blocks of story
    time, the unit of a single-story subject (whose blocked folds cannot give a whole-story r),
    so every subject of the run is scored in one unit (docs/validity.md 4b); else 0 (whole-story
    r for every held-out story)."""
    if job.n_stimuli(subject) > 1 and min(map(job.n_stimuli, job.runs.subject.unique())) == 1:
        return int(job.settings.n_folds)
    return 0


def splitter(job: Job, subject: str) -> Splitter:
    """The folds of ``subject``'s fits: the settings' folds and gap, and its scoring blocks
    (:func:`score_blocks_of`)."""
    st = job.settings
    return Splitter(gap=st.gap_trs, n_folds=st.n_folds, inner_folds=st.inner_folds,
                    score_blocks=score_blocks_of(job, subject))


def input_key(job: Job, condition: str, seed: int, subject: str, extra=()) -> str:
    from .features import story_path

    rows = job.subject_runs(subject)
    feats = []
    lm = condition.split(":", 1)[-1]
    fold = job.subject_fold.get(subject)
    for src in (job.features, job.all_layers, job.surprisal):
        paths = src.get((lm, seed), {})
        feats += [(s, content_hash(p)) for s in sorted(set(rows.story))
                  if (p := story_path(paths, s, fold))]
    feats += [(s, content_hash(job.audio[s])) for s in sorted(set(rows.story))
              if condition == "audio_envelope" and s in job.audio]
    trs = [content_hash(Path(job.transcripts_dir) / f"{s}.tsv") for s in sorted(set(rows.story))]
    bold = [(r.story, int(r.run), content_hash(r.bold_path), int(r.trim_start), int(r.trim_end))
            for r in rows.itertuples()]
    from .spaces import space_version

    merged = sorted((s, g) for s, g in job.stimulus.items() if s != g)   # only when it matters
    blocks = score_blocks_of(job, subject)
    return key_of(job.settings.key(), condition, space_version(condition), seed, feats, trs, bold,
                  list(extra) + ([("stimulus", merged)] if merged else []) +
                  ([("score_blocks", blocks)] if blocks else []),
                  content_hash(job.mask_path),
                  content_hash(job.labels_path) if job.labels_path else "")

