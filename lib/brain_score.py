"""Stage 05 for BOLD volumes, top to bottom: fit every unit (:mod:`lib.encoding`, serially or on
Dask), then reduce (:mod:`lib.reduction`: score tables, noise ceilings, group tests, maps) and
write. Response matrices take :mod:`lib.matrix_encoding` instead."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import reduction as red
from .cluster import map_units
from .encoding import (PARTITION, Job, UnitsFailed, fit_partition_unit, fit_unit,
                       partition_seeds, plan_units)
from .geometry import load_geometry, save_map


def available_spaces(job: Job) -> tuple[list[tuple[str, int]], pd.DataFrame]:
    """The feature spaces of ``settings.spaces`` that this run's inputs allow, as (condition,
    seed) pairs, and a table of the ones left out and why (no audio, no surprisal)."""
    out, skipped = [], []
    stories = set(job.runs.story)
    for space in job.settings.spaces:
        if space == "audio_envelope" and not stories <= set(job.audio):
            skipped.append(dict(space=space, reason="no stimuli/<story>_audio.wav for " +
                                ", ".join(sorted(stories - set(job.audio)))))
        elif space.startswith("surprisal:"):
            lm = space.split(":", 1)[1]
            seeds = sorted(sd for c, sd in job.surprisal if c == lm)
            if not seeds:
                skipped.append(dict(space=space, reason=f"no surprisal of {lm!r} (stage 03 "
                                                        f"surprisal: true)"))
            out += [(space, sd) for sd in seeds]
        else:
            out.append((space, 0))
    return out, pd.DataFrame(skipped, columns=["space", "reason"])


def run_stage(job: Job, fdr_q: float = 0.05, re_min_subjects: int = 6,
              re_n_perm: int = 1000, client=None, subjects_per_unit: int = 8,
              progress: bool = True) -> dict:
    """Stage 05: fit every unit (serially, or on a Dask ``client``), then reduce.

    Writes ``scores.csv``, ``layer_scores.csv``, ``noise_ceiling.csv``, ``voxel_scores.npz``,
    ``group.npz``, ``group_tests.csv`` and group maps under ``maps/`` (NIfTI, or a GIfTI pair
    per map on a surface). Units that fail on bad input
    are reported together (:class:`UnitsFailed`) after every other unit finished.
    """
    # long by design: stage 05 reads top to bottom here (fit, reduce, test, write), in order
    st = job.settings
    spaces, skipped = available_spaces(job)
    for r in skipped.itertuples():
        print(f"feature space {r.space} left out: {r.reason}")
    conditions = sorted(job.features) + spaces
    units = plan_units(job, conditions, subjects_per_unit)
    status = map_units(fit_unit, job, units, client=client, desc="encoding units",
                       progress=progress)
    p_seeds = partition_seeds(job)
    p_units = plan_units(job, [(PARTITION, sd) for sd in p_seeds], subjects_per_unit)
    if p_units:
        p_status = map_units(fit_partition_unit, job, p_units, client=client,
                             desc="partition units", progress=progress)
        units, status = units + p_units, status + p_status
    failed = [(u, s) for u, sts in zip(units, status) for s in sts if s["status"] == "failed"]
    if failed:
        lines = "\n".join(f"  {u.condition} seed {u.seed} {s['subject']}: {s['error']}"
                          for u, s in failed)
        raise UnitsFailed(f"{len(failed)} unit fits failed (the others are saved):\n{lines}")
    synthetic = bool(job.runs["synthetic_bold"].any())
    scores, layers, voxels, alphas = red.score_tables(job, conditions, synthetic)
    nc, nc_maps = red.noise_ceilings(job, synthetic, fdr_q)
    group = {}
    mask_img = load_geometry(job.mask_path)
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
        save_map(g["score"], mask_img, Path(job.out_dir) / "maps" / f"group_{cond}_r.nii.gz")
        save_map(np.where(g["fdr"], g["score"], 0), mask_img,
                     Path(job.out_dir) / "maps" / f"group_{cond}_r_fdr.nii.gz")
    if {"sft", "raw"} <= set(group) and n_sub >= re_min_subjects:
        seeds_of = {c: sorted(s for cc, s in job.features if cc == c) for c in ("sft", "raw")}
        group["delta"] = {f"re_{k}": v for k, v in red.random_effects(
            job, "sft", seeds_of["sft"], b="raw", seeds_b=seeds_of["raw"],
            n_perm=re_n_perm).items()}
    part = pd.DataFrame()
    if p_seeds:
        part, part_maps, part_group = red.partition_outputs(job, p_seeds, synthetic, fdr_q)
        voxels.update(part_maps)
        group.update(part_group)
        for name, g in part_group.items():
            save_map(np.where(g["fdr"], g["score"], 0), mask_img,
                         Path(job.out_dir) / "maps" / f"group_{name.replace(':', '-')}_fdr.nii.gz")
    tests = red.write_outputs(job.out_dir, scores, layers, voxels, nc, nc_maps, group, part,
                              skipped, alphas)
    return dict(scores=scores, layer_scores=layers, noise_ceiling=nc, group=group,
                group_tests=tests, partition=part, spaces_skipped=skipped,
                units=pd.DataFrame([dict(condition=u.condition, seed=u.seed, **s)
                                    for u, sts in zip(units, status) for s in sts]))
