"""Stage 05 reduction of volumes and surfaces: per-subject unit results -> tables, maps, noise
ceilings, group tests (:func:`reduce_volumes`).

Nothing here refits a model. Scores come from the unit files (:mod:`lib.encoding`); the noise
ceiling streams each story-run's BOLD over subjects twice (a running sum, then each subject against
the others), so memory holds one subject plus the sum; the group permutation test rebuilds each
subject's null plan from its saved alphas.

Aggregation everywhere: runs are averaged within a story, then stories with equal weight, then
seeds (:func:`lib.engine.folds.aggregate_runs`); the group score is the mean over subjects.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .cache import write_csv, write_npz
from .job import (PARTITION, Job, design, labels_of, load_result, mask_of, run_targets,
                  score_blocks_of, subject_targets, summary_names)
from .engine import (aggregate_runs, ceiling_from_isc, fdr_bh, np_pearson, permutation_test,
                     position_blocks, random_effects_map, repeat_ceiling, zscore_time)


def _run_story(meta: dict) -> np.ndarray:
    names = list(dict.fromkeys(s for s, _ in meta["runs"]))
    return np.array([names.index(s) for s, _ in meta["runs"]])


def subject_map(arrays: dict, meta: dict, key: str = "run_scores") -> np.ndarray:
    """A subject's score per target: runs within story, then stories equally."""
    return aggregate_runs(arrays[key], _run_story(meta))


def score_tables(job: Job, conditions: list[tuple[str, int]], synthetic: bool
                 ) -> tuple[pd.DataFrame, pd.DataFrame, dict, pd.DataFrame]:
    """(scores, layer scores, voxel maps, chosen alphas). Voxel keys:
    ``subject|story|run|condition|seed``; chance maps under ``<condition>~chance``."""
    names = summary_names(job)
    n_sum = len(names)
    rows, layer_rows, voxels, alpha_rows = [], [], {}, []
    for cond, seed in conditions:
        for sub in sorted(job.runs.subject.unique()):
            arrays, meta = load_result(job, cond, seed, sub)
            rs, valid = arrays["run_scores"], arrays["valid"]
            ch = arrays.get("chance_run_scores")
            alphas = arrays["fold_alphas"]
            base = dict(subject=sub, condition=cond, seed=seed, model_tag=job.model_tags.get(
                (cond, seed), cond), fold_scheme=meta["scheme"], gap=meta["gap"],
                synthetic_bold=synthetic)
            vox = slice(0, rs.shape[1] - n_sum)
            a_vals, a_counts = np.unique(alphas[:, vox][:, valid[vox]], return_counts=True)
            alpha_rows += [dict(condition=cond, seed=seed, subject=sub, alpha=float(a),
                                n_choices=int(c)) for a, c in zip(a_vals, a_counts)]
            for i, (story, run) in enumerate(meta["runs"]):
                voxels[f"{sub}|{story}|{run}|{cond}|{seed}"] = rs[i, vox].astype(np.float32)
                if ch is not None:
                    voxels[f"{sub}|{story}|{run}|{cond}~chance|{seed}"] = ch[i, vox]
                r = dict(base, story=story, run=run)
                ok = valid[vox]
                rows.append(dict(r, target="voxels_mean", brain_score=float(np.nanmean(
                    rs[i, vox][ok])), chance_score=float(np.nanmean(ch[i, vox][ok]))
                    if ch is not None else np.nan, concat_r_diag=float(np.nanmean(
                        arrays["concat_r"][vox][ok])), n_valid=int(ok.sum()),
                    n_invalid=int(meta["n_invalid"]), alpha_median=float(np.nanmedian(
                        alphas[:, vox][:, ok])), alpha_edge_fraction=meta["edge_fraction"],
                    warnings=" | ".join(meta["warnings"])))
                for j, name in enumerate(names):
                    c = rs.shape[1] - n_sum + j
                    rows.append(dict(r, target=name, brain_score=float(rs[i, c]),
                                     chance_score=float(ch[i, c]) if ch is not None else np.nan,
                                     concat_r_diag=float(arrays["concat_r"][c]), n_valid=1,
                                     n_invalid=0, alpha_median=float(np.median(alphas[:, c])),
                                     alpha_edge_fraction=meta["edge_fraction_summary"][j],
                                     warnings=""))
                if "layer_scores" in arrays:
                    for layer, ls in enumerate(arrays["layer_scores"]):
                        for j, name in enumerate(names):
                            layer_rows.append(dict(base, story=story, run=run, layer=layer,
                                                   target=name, brain_score=float(ls[i, j])))
    return pd.DataFrame(rows), pd.DataFrame(layer_rows), voxels, pd.DataFrame(alpha_rows)


# --------------------------------------------------------------------------- noise ceiling
def noise_ceilings(job: Job, synthetic: bool, fdr_q: float = 0.05, n_iter: int = 1000,
                   max_subjects: int = 20) -> tuple[pd.DataFrame, dict]:
    """Per (story, run) with >= 2 subjects: LOSO ISC of z-scored BOLD -- in each subject's scoring
    unit (:func:`unit_r`: per block of story time for a subject who heard one story, like its
    brain score) -- and the Spearman-Brown corrected ceiling
    (:func:`lib.engine.inference.ceiling_from_isc`), and which voxels respond
    reliably to the story: group ISC significant at FDR ``fdr_q`` against independent circular
    shifts of every subject (:func:`lib.engine.inference.isc_reliability`, at most ``max_subjects`` of
    them, chosen at random) -- a model-free selection (``isc_reliable``). Per subject with two
    hearings of a story: the repeat-based ceiling. Returns (table, voxel maps)."""
    from .engine import isc_reliability
    mask = mask_of(job)
    labels = labels_of(job, mask)
    names = summary_names(job)
    n_sum = len(names)
    rows, maps = [], {}
    for (story, run), g in job.runs.groupby(["story", "run"]):
        g = g.sort_values("subject")
        if len(g) < 2:
            continue
        n = len(g)
        iscs, units = _loso_iscs(job, g, mask, labels)
        chosen = set(np.random.default_rng(0).permutation(g.subject)[:max_subjects])
        Zs = [run_targets(job, r, mask, labels)[:, :-n_sum] for r in g.itertuples()
              if r.subject in chosen]
        reliable = fdr_bh(isc_reliability(Zs, n_iter)[1], fdr_q)
        for r in g.itertuples():
            isc = iscs[r.subject]
            ceil = ceiling_from_isc(isc, n)
            maps[f"{r.subject}|{story}|{run}|isc_loso|0"] = isc[:-n_sum]
            maps[f"{r.subject}|{story}|{run}|noise_ceiling|0"] = ceil[:-n_sum]
            maps[f"{r.subject}|{story}|{run}|isc_reliable|0"] = reliable.astype(np.float32)
            for j, name in enumerate(names + ["voxels_median"]):
                c = (isc.size - n_sum + j) if j < n_sum else None
                rows.append(dict(subject=r.subject, story=story, run=int(run), n_subjects=n,
                                 target=name, ceiling_kind="isc_loso_spearman_brown",
                                 scoring_unit=("whole story" if units[r.subject] is None else
                                               f"{len(units[r.subject])} blocks of story time"),
                                 n_reliable_voxels=int(reliable.sum()),
                                 isc_loso=float(isc[c]) if c is not None else
                                 float(np.nanmedian(isc[:-n_sum])),
                                 noise_ceiling=float(ceil[c]) if c is not None else
                                 float(np.nanmedian(ceil[:-n_sum])),
                                 synthetic_bold=synthetic))
    rows += _repeat_ceilings(job, mask, labels, names, maps, synthetic)
    return pd.DataFrame(rows), maps


def _loso_iscs(job: Job, g: pd.DataFrame, mask, labels) -> tuple[dict, dict]:
    """Each subject of one (story, run) against the mean of the others, in its scoring unit:
    ({subject: ISC per target}, {subject: its blocks or None})."""
    total = None
    for r in g.itertuples():          # pass 1: running sum of z-scored series
        z = zscore_time(run_targets(job, r, mask, labels))
        total = z if total is None else total + z
    iscs, units = {}, {}
    for r in g.itertuples():          # pass 2: each subject against the mean of the others
        z = zscore_time(run_targets(job, r, mask, labels))
        units[r.subject] = score_blocks(job, r.subject, len(z))
        iscs[r.subject] = unit_r(z, (total - z) / (len(g) - 1), units[r.subject])
    return iscs, units


def _repeat_ceilings(job: Job, mask, labels, names: list, maps: dict, synthetic: bool
                     ) -> list[dict]:
    """Per subject who heard a story twice: sqrt(r(run 1, run 2)) (its map into ``maps``)."""
    rows, n_sum = [], len(names)
    for (sub, story), g in job.runs.groupby(["subject", "story"]):
        if len(g) < 2:
            continue
        a, b = (run_targets(job, r, mask, labels) for r in list(g.sort_values("run")
                                                                 .itertuples())[:2])
        if a.shape != b.shape:
            continue
        rc = repeat_ceiling(a, b)
        maps[f"{sub}|{story}|repeat|repeat_ceiling|0"] = rc[:-n_sum]
        rows += [dict(subject=sub, story=story, run=-1, n_subjects=1, target=name,
                      ceiling_kind="repeat_run1_run2", scoring_unit="whole run", isc_loso=np.nan,
                      noise_ceiling=float(rc[rc.size - n_sum + j]), synthetic_bold=synthetic)
                 for j, name in enumerate(names)]
    return rows


def score_blocks(job: Job, subject: str, n: int) -> list[np.ndarray] | None:
    """The blocks of story time a subject's brain score averages its r over in a run of ``n``
    kept TRs: its outer folds' test blocks when it heard one story, the same cut of each
    held-out story when :func:`lib.job.score_blocks_of` scores it per block; None when it is
    scored by whole-story r."""
    n_blocks = job.settings.n_folds if job.n_stimuli(subject) == 1 else \
        score_blocks_of(job, subject)
    if not n_blocks or n < 2 * n_blocks:
        return None
    return [np.flatnonzero(b) for b in position_blocks(np.arange(n), n_blocks)]


def unit_r(z: np.ndarray, other: np.ndarray, blocks: list[np.ndarray] | None) -> np.ndarray:
    """r of each column of ``z`` with ``other`` in the brain score's scoring unit: over the whole
    run, or the mean of the per-block r (a ceiling in another unit than its score is no ceiling:
    per-block r drops the slow variance between blocks)."""
    if blocks is None:
        return np_pearson(z, other).astype(np.float32)
    return np.mean([np_pearson(z[b], other[b]) for b in blocks], 0).astype(np.float32)


# --------------------------------------------------------------------------- group tests
def null_plans(job: Job, condition: str, seeds: list[int], subject: str,
               cache: dict | None = None) -> list:
    """The subject's NullPlans for ``condition`` (one per seed), rebuilt from its saved alphas."""
    from .engine import NullPlan

    st = job.settings
    mask = mask_of(job)
    Y = subject_targets(job, subject, mask, labels_of(job, mask))
    plans = []
    for seed in seeds:
        D = design(job, condition, seed, subject, {} if cache is None else cache)
        with np.load(job.result_path(condition, seed, subject)) as z:
            best = np.searchsorted(D.alphas, z["fold_alphas"].astype(np.float64) * (1 - 1e-6))
            valid = z["valid"]
        best = np.where(valid[None], np.clip(best, 0, len(D.alphas) - 1), -1)
        plans.append(NullPlan(D, Y, valid, best, st.null, seed=0,
                              batch_targets=st.batch_targets))
    return plans


def group_tests(job: Job, condition: str, seeds: list[int], fdr_q: float = 0.05,
                client=None) -> dict:
    """Group permutation test of the group-mean score (every voxel and summary target) of
    ``condition`` averaged over ``seeds``: p-values, FDR over voxels, permutations run.

    Serially, every subject's null plan is held here; with a Dask ``client`` each subject's plan
    is built and kept on a worker, and only the batches of null scores travel."""
    from .engine import subject_null

    names = summary_names(job)
    subs = sorted(job.runs.subject.unique())
    obs, valid = [], None
    for sub in subs:
        res = [load_result(job, condition, s, sub) for s in seeds]
        obs.append(np.mean([subject_map(*r) for r in res], 0))
        for arrays, _ in res:
            valid = arrays["valid"] if valid is None else valid & arrays["valid"]
    obs = np.mean(obs, 0)
    n_sum = len(names)
    summary_cols = np.arange(len(obs) - n_sum, len(obs))
    if client is None:
        cache: dict = {}
        plans = [null_plans(job, condition, seeds, s, cache) for s in subs]
        _, p, n_done = permutation_test(plans, obs, job.settings.null)
        null_mean = _null_mean(lambda b0, b1, cols: [subject_null(sub, b0, b1, cols)
                                                     for sub in plans],
                               job.settings.null, summary_cols)
    else:
        futures = [client.submit(null_plans, job, condition, seeds, s, pure=False)
                   for s in subs]

        def batch_fn(b0, b1, cols):
            return client.gather([client.submit(subject_null, f, b0, b1, cols, pure=False)
                                  for f in futures])

        _, p, n_done = permutation_test([], obs, job.settings.null, batch_fn, valid)
        null_mean = _null_mean(batch_fn, job.settings.null, summary_cols)
        client.cancel(futures)
    vox_p = p[:-n_sum]
    return dict(score=obs[:-n_sum].astype(np.float32), p=vox_p,
                fdr=fdr_bh(vox_p, fdr_q), n_perm_run=n_done[:-n_sum],
                summary=pd.DataFrame(dict(condition=condition, target=names,
                                          group_score=obs[-n_sum:], p_value=p[-n_sum:],
                                          n_perm_run=n_done[-n_sum:],
                                          n_subjects=len(subs),
                                          seeds=",".join(map(str, seeds)),
                                          null_mean=null_mean)))


def _null_mean(batch_fn, spec, cols: np.ndarray) -> np.ndarray:
    """Mean of the group null of targets ``cols`` over its first ``perm_batch`` permutations (the
    test's own orders, none stopped early: a sample cut at the stopping time would be biased
    towards the exceedances that stopped it) -- a chance level of the group score, like
    ``chance_score`` a diagnostic that no headline subtracts (docs/validity.md 1)."""
    n = min(spec.perm_batch, spec.n_perm)
    return np.mean(batch_fn(0, n, cols), 0).mean(0)


def random_effects(job: Job, a: str, seeds: list[int], b: str | None = None,
                   seeds_b: list[int] | None = None, n_perm: int = 1000) -> dict:
    """nilearn second-level one-sample test across subjects of condition ``a`` (or of a - b)
    on Fisher-z maps (TFCE on a volume; vertex-level max-t on a surface), each subject's map
    averaged over its seeds first."""
    from .geometry import is_surface, load_geometry

    n_sum = len(summary_names(job))
    subs = sorted(job.runs.subject.unique())

    def smap(cond, sub):
        m = np.mean([subject_map(*load_result(job, cond, s, sub))
                     for s in (seeds if cond == a else seeds_b or [0])], 0)
        return np.arctanh(np.clip(np.nan_to_num(m[:-n_sum]), -0.999999, 0.999999))

    zmaps = np.stack([smap(a, s) - (smap(b, s) if b else 0) for s in subs])
    # a difference of two models can go either way: its map is tested two-sided
    geometry = load_geometry(job.mask_path)
    surface = is_surface(geometry)
    return random_effects_map(zmaps, None if surface else geometry, n_perm=n_perm,
                              tfce=not surface, two_sided=b is not None)


# --------------------------------------------------------------------------- partition
def _partition_measures(arrays: dict, meta: dict) -> dict[str, np.ndarray]:
    """Per run (n_runs, t): joint R^2, unique and split R^2 of each space, shared R^2, and each
    tested space's unique share against its placebo (``unique_vs_placebo:<space>``)."""
    from .engine import partition_measures

    subsets = [tuple(x) for x in meta["subsets"]]
    full = subsets[0]
    out = partition_measures(list(full), {sub: arrays[f"fit{i}_run_r2"]
                                          for i, sub in enumerate(subsets)},
                             arrays["split_run_r2"])
    for i, s in enumerate(full):
        if f"vs_placebo{i}_run_r2" in arrays:
            out[f"unique_vs_placebo:{s}"] = arrays[f"vs_placebo{i}_run_r2"]
    return out


def partition_outputs(job: Job, seeds: list[int], synthetic: bool, fdr_q: float = 0.05
                      ) -> tuple[pd.DataFrame, dict, dict]:
    """(table, voxel maps, group tests) of the variance partition: every measure per subject,
    run and summary target (and the voxel mean); maps per run; for each space of
    ``settings.partition_null`` the across-subject test of its unique R^2."""

    names = summary_names(job)
    n_sum = len(names)
    rows, maps, subj = [], {}, {}
    for sub in sorted(job.runs.subject.unique()):
        per_seed = []
        for seed in seeds:
            arrays, meta = load_result(job, PARTITION, seed, sub)
            meas = _partition_measures(arrays, meta)
            story = _run_story(meta)
            per_seed.append({k: aggregate_runs(v, story) for k, v in meas.items()})
            for i, (st, run) in enumerate(meta["runs"]):
                base = dict(subject=sub, story=st, run=run, seed=seed, synthetic_bold=synthetic)
                for k, v in meas.items():
                    maps[f"{sub}|{st}|{run}|partition:{k}|{seed}"] = v[i, :-n_sum]
                    rows.append(dict(base, measure=k, target="voxels_mean",
                                     r2=float(np.nanmean(v[i, :-n_sum]))))
                    rows += [dict(base, measure=k, target=n, r2=float(v[i, -n_sum + j]))
                             for j, n in enumerate(names)]
        subj[sub] = {k: np.mean([p[k] for p in per_seed], 0) for k in per_seed[0]}
    group = {f"partition_unique_vs_placebo:{space}": unique_test(
        np.stack([subj[s][f"unique_vs_placebo:{space}"] for s in sorted(subj)]), names, space,
        seeds, fdr_q) for space in job.settings.partition_null}
    return pd.DataFrame(rows), maps, group


def unique_test(u: np.ndarray, names: list[str], space: str, seeds: list[int],
                fdr_q: float = 0.05) -> dict:
    """Across-subject test of a space's unique share against its conditional placebo (``u``:
    subjects x (voxels + summary targets) of ``unique_vs_placebo``, seeds averaged inside
    subjects): one-sided sign flips of the subjects' values, the subject as the unit. Its null is
    "the space adds nothing beyond what the other spaces explain of it" (not "no space
    predicts", which a null that reorders BOLD tests); docs/validity.md 5f measures its bias and
    false-positive rate."""
    from .engine import sign_flip_pvalues, t_ci

    n_sum = len(names)
    obs = np.nanmean(u, 0)
    p, n_patterns = sign_flip_pvalues(u)
    ci = np.array([t_ci(u[:, -n_sum + j]) for j in range(n_sum)]).reshape(n_sum, 2)
    return dict(score=obs[:-n_sum].astype(np.float32), p=p[:-n_sum],
                fdr=fdr_bh(np.nan_to_num(p[:-n_sum], nan=1.0), fdr_q),
                summary=pd.DataFrame(dict(
                    condition=f"partition unique_vs_placebo:{space}", target=names,
                    group_score=obs[-n_sum:], p_value=p[-n_sum:], ci95_low=ci[:, 0],
                    ci95_high=ci[:, 1], n_perm_run=n_patterns, n_subjects=len(u),
                    seeds=",".join(map(str, seeds)),
                    test="one-sided sign flips across subjects")))


def write_outputs(out_dir: Path, scores, layers, voxels, nc, nc_maps, group: dict,
                  partition: pd.DataFrame | None = None, skipped: pd.DataFrame | None = None,
                  alphas: pd.DataFrame | None = None) -> pd.DataFrame:
    out_dir = Path(out_dir)
    if alphas is not None:
        write_csv(out_dir / "alphas.csv", alphas)
    if partition is not None and len(partition):
        write_csv(out_dir / "partition.csv", partition)
    if skipped is not None:
        write_csv(out_dir / "spaces_skipped.csv", skipped)
    write_csv(out_dir / "scores.csv", scores)
    if len(layers):
        write_csv(out_dir / "layer_scores.csv", layers)
    write_csv(out_dir / "noise_ceiling.csv", nc)
    write_npz(out_dir / "voxel_scores.npz", **voxels, **nc_maps)
    flat = {}
    for cond, g in group.items():
        for k, v in g.items():
            if isinstance(v, np.ndarray):
                flat[f"{cond}_{k}"] = v
    write_npz(out_dir / "group.npz", **flat)
    tests = [g["summary"] for g in group.values() if "summary" in g]
    tests = pd.concat(tests, ignore_index=True) if tests else pd.DataFrame()
    write_csv(out_dir / "group_tests.csv", tests)
    return tests


def reduce_volumes(job: Job, conditions: list[tuple[str, int]], partition_seeds: list[int],
                   skipped: pd.DataFrame, fdr_q: float = 0.05, re_min_subjects: int = 6,
                   re_n_perm: int = 1000, client=None) -> dict:
    """Gather the units' results (:class:`lib.encoding.VolumeJob`) into tables, noise ceilings,
    group tests and maps, and write them: ``scores.csv``, ``layer_scores.csv``,
    ``noise_ceiling.csv``, ``voxel_scores.npz``, ``group.npz``, ``group_tests.csv`` and group
    maps under ``maps/`` (NIfTI, or a GIfTI pair per map on a surface)."""
    from .geometry import load_geometry, save_map

    st = job.settings
    synthetic = bool(job.runs["synthetic_bold"].any())
    scores, layers, voxels, alphas = score_tables(job, conditions, synthetic)
    nc, nc_maps = noise_ceilings(job, synthetic, fdr_q)
    mask_img, maps = load_geometry(job.mask_path), Path(job.out_dir) / "maps"
    n_sub = job.runs.subject.nunique()
    seeds_of = {c: sorted(s for cc, s in job.features if cc == c) for c in st.perm_conditions}
    group = {}
    for cond in st.perm_conditions:
        if not seeds_of[cond] or st.null.n_perm <= 0:
            continue
        g = group_tests(job, cond, seeds_of[cond], fdr_q, client)
        if n_sub >= re_min_subjects:
            g.update({f"re_{k}": v for k, v in
                      random_effects(job, cond, seeds_of[cond], n_perm=re_n_perm).items()})
        group[cond] = g
        save_map(g["score"], mask_img, maps / f"group_{cond}_r.nii.gz")
        save_map(np.where(g["fdr"], g["score"], 0), mask_img, maps / f"group_{cond}_r_fdr.nii.gz")
    if {"sft", "raw"} <= set(group) and n_sub >= re_min_subjects:
        group["delta"] = {f"re_{k}": v for k, v in random_effects(
            job, "sft", seeds_of["sft"], b="raw", seeds_b=seeds_of["raw"],
            n_perm=re_n_perm).items()}
    part = pd.DataFrame()
    if partition_seeds:
        part, part_maps, part_group = partition_outputs(job, partition_seeds, synthetic, fdr_q)
        voxels.update(part_maps)
        group.update(part_group)
        for name, g in part_group.items():
            save_map(np.where(g["fdr"], g["score"], 0), mask_img,
                     maps / f"group_{name.replace(':', '-')}_fdr.nii.gz")
    tests = write_outputs(job.out_dir, scores, layers, voxels, nc, nc_maps, group, part,
                          skipped, alphas)
    return dict(scores=scores, layer_scores=layers, noise_ceiling=nc, group=group,
                group_tests=tests, partition=part, spaces_skipped=skipped)
