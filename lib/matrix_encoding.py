"""Stage 05's fits over response matrices (ROI / parcel / component series): :class:`MatrixJob`,
the unit protocol of :mod:`lib.units` for targets without geometry.

A unit fits one condition (an LM's activations, a feature space; one SFT seed) for the subjects
who heard the same stories with the same TRs: they share the features, the folds and every
decomposition. Per subject:

* targets: each run's response matrix (rows = TRs, columns = ROIs or components), z-scored over
  the run's kept TRs;
* folds: ``outer_folds`` = k > 0 deals every story into k folds of whole stories, so each story
  is held out once (the powered design); else the dataset's own split when it has one (fit on
  every ``train`` story, score the ``test`` stories), else leave one story out; alphas per target
  on inner folds that hold out groups of whole training stories (``inner_groups``) inside each
  outer training set, each standardised on its own fit rows;
* scores: held-out predictions (kept, so two models can be compared on the same TRs), the r of
  each target per held-out story averaged over stories, and the *chance* score of the same
  features circularly shifted within each story (:func:`lib.spaces.mismatch`);
* the layer profile: the same fit for every layer of the conditions that have all layers.

:func:`write_score_tables` then writes ``component_scores.csv`` (per target), ``scores.csv`` (per named set
of targets: the mean r over the first k targets and over all), ``layer_scores.csv`` and
``deltas.csv``: per subject, Δ of each contrast (``sft - raw`` first) with its block CI and
block-exchange permutation p from :mod:`lib.engine.paired` -- held-out time is the unit, there is no
group test. Unit results are cached by the content of their inputs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .cache import key_of, write_csv
from .data import DataError
from .job import JobBase, content_hash, design_inputs, kept_slice
from .engine import (DEFAULT_ALPHAS, EngineError, Layout, Splitter, heldout_predictions,
                     paired_comparison, prepare, split_folds, story_group_folds, target_scores)
from .features import FeatureMaps

MATRIX_VERSION = 4     # 4: eigh in torch's LAPACK (3: all penalties at once; 2: chance shifts before trim)
PAIRED_CONTRASTS = (("sft", "raw"), ("sft", "control"), ("sft", "scrambled"), ("raw", "random"),
             ("raw", "word_rate"))


@dataclass(frozen=True)
class MatrixSettings:
    delays: tuple = (1, 2, 3, 4)
    aggregation: str = "sum"
    alphas: tuple = tuple(DEFAULT_ALPHAS)
    inner_groups: int = 5
    outer_folds: int = 0            # k > 0: every story held out once, in k folds of whole stories
    gap: int = 0                    # folds hold out whole stories: no gap between them
    chance: bool = True
    chance_conditions: tuple = ()   # the conditions that get a chance score (empty: every one)
    spaces: tuple = ("word_rate",)
    layer_conditions: tuple = ("raw", "sft")
    layer_stride: int = 1           # layer profile: every k-th layer (and the last) ...
    layer: int = 8                  # ... and always the layer the headline scores
    target_sets: tuple = (("first10", 10), ("all", 0))   # (name, first k targets; 0 = all)
    contrasts: tuple = PAIRED_CONTRASTS
    n_exchanges: int = 10000        # block exchanges for each Δ's p-value and CI
    backend: str = "numpy"
    device: str | None = None

    @classmethod
    def from_params(cls, *, alphas=(), feature_spaces=("word_rate",), target_sets=None,
                    layer_profile_conditions=("raw", "sft"), ridge_backend: str = "numpy",
                    device: str | None = "auto", **params) -> "MatrixSettings":
        """The settings from stage 05's notebook parameters (lists become tuples, an empty
        ``alphas`` the default grid, ``target_sets`` a {name: first k} dict, ``device: auto``
        None); an unknown name is an error."""
        known = {f.name for f in fields(cls)} - {"spaces", "layer_conditions", "backend"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise TypeError(f"unknown stage-05 parameters {unknown}; known: {sorted(known)}")
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        if target_sets is not None:
            params["target_sets"] = tuple(dict(target_sets).items())
        return cls(alphas=tuple(alphas) or tuple(DEFAULT_ALPHAS), spaces=tuple(feature_spaces),
                   layer_conditions=tuple(layer_profile_conditions), backend=ridge_backend,
                   device=None if device == "auto" else device, **params)

    def key(self) -> str:
        d = asdict(self)
        for k in ("device", "backend", "n_exchanges", "contrasts", "target_sets"):
            d.pop(k)
        for k in ("outer_folds", "chance_conditions"):
            if not d[k]:            # keys of designs without these settings are unchanged
                d.pop(k)
        return key_of("matrix05", MATRIX_VERSION, d)


class MatrixJob(JobBase):
    """Stage 05 over response matrices (the unit protocol of :mod:`lib.units`): a subject's
    targets are the columns of its runs' matrices; no geometry. One fine-tuned model per
    condition serves every subject (``subject_fold`` stays empty)."""
    settings: MatrixSettings

    def signature(self, subject: str) -> tuple:
        r = self.subject_runs(subject)
        return tuple(zip(r.story, r.run.astype(int), r.n_trs.astype(int), r.split))

    def test_stories(self) -> list[str]:
        """The stories held out by the dataset's own split ([] when every story is held out
        in turn: ``outer_folds``, or leave one story out)."""
        if self.settings.outer_folds:
            return []
        return sorted(set(self.runs.loc[self.runs.split == "test", "story"]))

    def heldout(self) -> str:
        """What the scores are computed on, in words."""
        if self.settings.outer_folds:
            return (f"every story held out once ({self.settings.outer_folds} folds of whole "
                    f"stories)")
        return ",".join(self.test_stories()) or "leave-one-story-out"

    def unit_key(self, condition: str, seed: int, subject: str) -> str:
        return _unit_key(self, condition, seed, subject)

    def fit(self, unit, subjects: list[str]):
        """Every subject's responses are read first, one at a time (a bad one fails alone);
        then the subjects are fitted together (they share every design)."""
        responses, failed = {}, {}
        for sub in subjects:
            try:
                responses[sub] = subject_responses(self, sub)
            except (DataError, OSError) as e:
                failed[sub] = e
        good = [s for s in subjects if s not in failed]
        try:
            arrays = fit_subjects(self, unit.condition, unit.seed, good, {}, responses) \
                if good else {}
            done = {s: (arrays[s], dict(subject=s, condition=unit.condition, seed=unit.seed,
                                        heldout=self.heldout())) for s in good}
        except (DataError, EngineError, OSError) as e:
            done = {s: e for s in good}
        for sub in subjects:
            yield sub, failed.get(sub, done.get(sub))


def matrix_job(manifest: pd.DataFrame, transcripts_dir, index: pd.DataFrame, out_dir,
               settings: MatrixSettings, spaces_cache) -> MatrixJob:
    """The :class:`MatrixJob` of stage 05."""
    runs = manifest[~manifest["excluded"]].sort_values(["subject", "story", "run"])
    if runs.empty:
        raise DataError("no run left after exclusions")
    if (runs.responses != "matrix").any():
        raise DataError("lib.matrix_encoding fits response matrices; volumes and surfaces "
                        "go through lib.encoding")
    fm = FeatureMaps.of(index)
    if fm.subject_fold:
        raise DataError("response-matrix runs use one fine-tuned model for every subject "
                        "(sft_mode: external or leaky); per-subject fold models are for BIDS runs")
    return MatrixJob(settings=settings, runs=runs.reset_index(drop=True),
                     transcripts_dir=str(transcripts_dir), features=fm.features,
                     all_layers=fm.all_layers, out_dir=str(out_dir),
                     spaces_cache=str(spaces_cache))


# --------------------------------------------------------------------------- one subject
def subject_responses(job: MatrixJob, subject: str) -> tuple[np.ndarray, list[str]]:
    """(rows, targets) responses of a subject's runs, each z-scored over its kept TRs, and the
    story of each row."""
    from .datasets import read_matrix
    from .engine import zscore_time

    Ys, stories = [], []
    widths = set()
    for r in job.subject_runs(subject).itertuples():
        Y = read_matrix(r.bold_path)
        if len(Y) != int(r.n_trs):
            raise DataError(f"{r.bold_path}: {len(Y)} TRs but the manifest says {r.n_trs}")
        Ys.append(zscore_time(Y[kept_slice(r)]).astype(np.float32))
        stories += [r.story] * len(Ys[-1])
        widths.add(Y.shape[1])
    if len(widths) > 1:
        raise DataError(f"{subject}: runs have different numbers of targets {sorted(widths)}")
    return np.vstack(Ys), stories


def _prepare(job: MatrixJob, X: np.ndarray, layout, source: str):
    st = job.settings
    tests = job.test_stories()
    folds = (story_group_folds(layout, st.outer_folds) if st.outer_folds else
             split_folds(layout, tests) if tests else None)
    if folds is None and len(layout.names) < 2:
        raise EngineError(f"{source}: one story and no split: nothing to hold out")
    cv = Splitter(gap=st.gap, folds=folds, inner_groups=st.inner_groups)
    return prepare(X, layout, cv, alphas=st.alphas, backend=st.backend, device=st.device,
                   source=source)


def design_for(job: MatrixJob, condition: str, seed: int, subject: str, cache: dict,
            mismatched: bool = False):
    key = (condition, seed, mismatched, job.signature(subject))
    if key not in cache:
        X, layout = design_inputs(job, condition, seed, subject, mismatched)
        cache[key] = _prepare(job, X, layout, f"{condition} seed {seed} {subject}")
    return cache[key]


def layer_profile_designs(job: MatrixJob, condition: str, seed: int, subject: str, cache: dict):
    """(layer, Design) for every layer of the condition's all-layer activations; each story's
    file is read once (one pass over the words for all layers), not once per layer. The
    headline layer's design is the condition's own (:func:`design_for`, in ``cache``): its
    activations are the all-layer file's slice (:func:`lib.features.story_activations`)."""
    from .features import load_activations
    from .spaces import design_matrix, tr_features
    from .transcripts import read_transcript

    st = job.settings
    rows = list(job.subject_runs(subject).itertuples())
    per_run = []
    for r in rows:
        acts = load_activations(job.all_layers[(condition, seed)][r.story])   # (L, words, d)
        words = read_transcript(Path(job.transcripts_dir) / f"{r.story}.tsv")
        n_l, n_w, d = acts.shape
        F = tr_features(acts.transpose(1, 0, 2).reshape(n_w, n_l * d), words["tr"].to_numpy(int),
                        int(r.n_trs), st.aggregation, words["onset"].to_numpy(float), float(r.tr),
                        source=str(job.all_layers[(condition, seed)][r.story]))
        per_run.append(F.reshape(int(r.n_trs), n_l, d))
    n_l = per_run[0].shape[1]
    for layer in sorted(set(range(0, n_l, st.layer_stride)) | {n_l - 1, st.layer}):
        if layer == st.layer:
            yield layer, design_for(job, condition, seed, subject, cache)
            continue
        Xs = [design_matrix(F[:, layer], kept_slice(r), st.delays) for F, r in zip(per_run, rows)]
        layout = Layout.of_runs([len(x) for x in Xs], [r.story for r in rows])
        yield layer, _prepare(job, np.vstack(Xs), layout, f"{condition} layer {layer} {subject}")


def _unit_key(job: MatrixJob, condition: str, seed: int, subject: str) -> str:
    rows = job.subject_runs(subject)
    stories = sorted(set(rows.story))
    feats = [(s, content_hash(src[s])) for src in (job.features.get((condition, seed), {}),
                                                   job.all_layers.get((condition, seed), {}))
             for s in stories if s in src]
    from .spaces import space_version

    return key_of(job.settings.key(), condition, space_version(condition), seed, feats,
                  [content_hash(Path(job.transcripts_dir) / f"{s}.tsv") for s in stories],
                  [(r.story, int(r.run), content_hash(r.bold_path), int(r.trim_start),
                    int(r.trim_end), r.split) for r in rows.itertuples()])


def fit_subjects(job: MatrixJob, condition: str, seed: int, subjects: list[str], cache: dict,
                 responses: dict | None = None) -> dict[str, dict]:
    """Held-out predictions and scores of one condition for subjects who share a signature
    (the same stories and TRs: every design, the layer profile's too, is computed once)."""
    st = job.settings
    out = {}
    for sub in subjects:
        Y, stories = (responses or {}).get(sub) or subject_responses(job, sub)
        D = design_for(job, condition, seed, sub, cache)
        rows, pred, alphas = heldout_predictions(D, Y, source=f"{sub} {condition}")
        seg = np.asarray(stories)[rows]
        out[sub] = dict(rows=rows.astype(np.int64), pred=pred, alphas=alphas.astype(np.float32),
                        r=target_scores(Y[rows], pred, seg).astype(np.float32))
        if st.chance and (not st.chance_conditions or condition in st.chance_conditions):
            Dc = design_for(job, condition, seed, sub, cache, mismatched=True)
            _, pc, _ = heldout_predictions(Dc, Y)
            out[sub]["chance_r"] = target_scores(Y[rows], pc, seg).astype(np.float32)
        out[sub]["_Y"], out[sub]["_seg"] = Y, seg
    if (condition, seed) in job.all_layers and condition in st.layer_conditions:
        prof = {sub: [] for sub in subjects}
        preds = {sub: [] for sub in subjects}
        done = []
        for layer, Dl in tqdm(layer_profile_designs(job, condition, seed, subjects[0], cache),
                              desc=f"layer profile {condition}", leave=False):
            done.append(layer)
            for sub in subjects:
                _, pl, _ = heldout_predictions(Dl, out[sub]["_Y"])
                prof[sub].append(target_scores(out[sub]["_Y"][out[sub]["rows"]], pl,
                                               out[sub]["_seg"]))
                preds[sub].append(pl.astype(np.float32))
        for sub in subjects:
            out[sub]["layer_r"] = np.asarray(prof[sub], np.float32)
            out[sub]["layers"] = np.asarray(done, np.int64)
            out[sub]["layer_pred"] = np.asarray(preds[sub])     # Δ by layer (lib.deltas)
    for sub in subjects:
        del out[sub]["_Y"], out[sub]["_seg"]
    return out


def load(job: MatrixJob, condition: str, seed: int, subject: str, layers: bool = False) -> dict:
    """A unit's arrays; the layer profile's predictions (large) only with ``layers``."""
    with np.load(job.result_path(condition, seed, subject)) as z:
        return {k: z[k] for k in z.files if layers or k != "layer_pred"}


# --------------------------------------------------------------------------- the stage
def target_sets(settings: MatrixSettings, n_targets: int) -> dict[str, np.ndarray]:
    """Named sets of target columns: the first k (k = 0: all)."""
    return {name: np.arange(min(k, n_targets) if k else n_targets)
            for name, k in settings.target_sets}


def write_score_tables(job: MatrixJob, conditions) -> dict[str, pd.DataFrame]:
    """Write ``component_scores.csv``, ``scores.csv``, ``layer_scores.csv`` and ``deltas.csv``
    from the units' results."""
    comp, summ, layers = score_tables_of(job, conditions)
    deltas = delta_table(job, conditions)
    out = Path(job.out_dir)
    write_csv(out / "component_scores.csv", comp)
    write_csv(out / "scores.csv", summ)
    write_csv(out / "layer_scores.csv", layers)
    write_csv(out / "deltas.csv", deltas)
    return dict(component_scores=comp, scores=summ, layer_scores=layers, deltas=deltas)


SCORE_COLUMNS = ["subject", "condition", "seed", "targets", "n_targets", "brain_score",
                 "chance_score", "above_chance", "n_test_trs", "test_stories", "synthetic_bold"]


def score_tables_of(job: MatrixJob, conditions) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    comp, summ, layers = [], [], []
    tests = job.heldout()
    synthetic = bool(job.runs["synthetic_bold"].any())
    for sub in sorted(job.runs.subject.unique()):
        for cond, seed in conditions:
            a = load(job, cond, seed, sub)
            r, ch = a["r"], a.get("chance_r", np.full_like(a["r"], np.nan))
            comp += [dict(subject=sub, condition=cond, seed=seed, target=k, brain_score=r[k],
                          chance_score=ch[k]) for k in range(len(r))]
            for name, cols in target_sets(job.settings, len(r)).items():
                summ.append(dict(subject=sub, condition=cond, seed=seed, targets=name,
                                 n_targets=len(cols), brain_score=float(r[cols].mean()),
                                 chance_score=float(ch[cols].mean()),
                                 above_chance=float(r[cols].mean() - ch[cols].mean()),
                                 n_test_trs=len(a["rows"]), test_stories=tests,
                                 synthetic_bold=synthetic))
                if "layer_r" in a:
                    layers += [dict(subject=sub, condition=cond, seed=seed, targets=name,
                                    layer=int(i), brain_score=float(lr[cols].mean()))
                               for i, lr in zip(a["layers"], a["layer_r"])]
    return (pd.DataFrame(comp, columns=["subject", "condition", "seed", "target", "brain_score",
                                        "chance_score"]),
            pd.DataFrame(summ, columns=SCORE_COLUMNS),
            pd.DataFrame(layers, columns=["subject", "condition", "seed", "targets", "layer",
                                          "brain_score"]))


DELTA_COLUMNS = ["subject", "contrast", "seed", "targets", "n_targets", "score_a", "score_b",
                 "delta", "ci_low", "ci_high", "p", "se", "mde", "block_trs", "exchange_unit", "n_blocks", "autocorr_trs",
                 "n_trs", "unit", "ci_method"]


def delta_table(job: MatrixJob, conditions) -> pd.DataFrame:
    """Per subject and contrast (a - b, same seed where b has it, else b's seed 0): Δ with its
    block CI and block-exchange permutation p on the same held-out TRs."""
    have = {(c, s) for c, s in conditions}
    out = []
    for sub in sorted(job.runs.subject.unique()):
        Y, stories = subject_responses(job, sub)
        for a_cond, b_cond in job.settings.contrasts:
            for seed in sorted(s for c, s in have if c == a_cond):
                b_seed = seed if (b_cond, seed) in have else 0
                if (b_cond, b_seed) not in have:
                    continue
                A, B = load(job, a_cond, seed, sub), load(job, b_cond, b_seed, sub)
                if not np.array_equal(A["rows"], B["rows"]):
                    raise DataError(f"{sub}: {a_cond} and {b_cond} were scored on different TRs")
                rows = A["rows"]
                res = paired_comparison(Y[rows], A["pred"], B["pred"], np.asarray(stories)[rows],
                                        target_sets(job.settings, Y.shape[1]),
                                        n_perm=job.settings.n_exchanges, seed=seed)
                res.insert(0, "subject", sub)
                res.insert(1, "contrast", f"{a_cond} - {b_cond}")
                res.insert(2, "seed", seed)
                res["unit"] = "held-out time (blocks of TRs within one subject)"
                res["ci_method"] = "inverted block-exchange test"
                out.append(res.rename(columns={"targets": "targets"}))
    if not out:
        return pd.DataFrame(columns=DELTA_COLUMNS)
    return pd.concat(out, ignore_index=True)[DELTA_COLUMNS]
