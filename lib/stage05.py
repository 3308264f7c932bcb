"""Stage 05, one entry for every kind of target: fit every unit, then reduce.

The kind of target decides three things, and only those: how a subject's targets are read and
where they live (:class:`lib.encoding.VolumeJob`: voxels or vertices in a mask, with ROI and
whole-brain summaries; :class:`lib.matrix_encoding.MatrixJob`: the columns of response
matrices, no geometry), which folds apply, and what the reduction writes
(:func:`lib.reduction.reduce_volumes`: group tests across subjects, maps, noise ceilings;
:func:`lib.matrix_encoding.write_score_tables` and :mod:`lib.deltas`: per-subject paired tests
on held-out time, seeds and subjects combined). Units run the same way for every kind
(:mod:`lib.units`).
"""
from __future__ import annotations

import pandas as pd

from .encoding import VolumeJob, partition_seeds
from .job import PARTITION, JobBase
from .matrix_encoding import MatrixJob, write_score_tables
from .units import UnitsFailed, fit_unit, plan_units

def available_spaces(job: JobBase) -> tuple[list[tuple[str, int]], pd.DataFrame]:
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


def run_units(job, units: list, client=None, desc: str = "encoding units",
              progress: bool = True) -> pd.DataFrame:
    """Fit every unit (serially, or on a Dask ``client``); a table of each subject's status.
    Raises :class:`UnitsFailed`, naming each failed subject and its error, after the others
    finished (their results are saved)."""
    from .cluster import map_units

    status = map_units(fit_unit, job, units, client=client, desc=desc, progress=progress)
    table = pd.DataFrame([dict(condition=u.condition, seed=u.seed, **s)
                          for u, sts in zip(units, status) for s in sts],
                         columns=["condition", "seed", "subject", "status", "error"])
    failed = table[table.status == "failed"]
    if len(failed):
        raise UnitsFailed(f"{len(failed)} unit fits failed (the others are saved):\n" +
                          "\n".join(f"  {r.condition} seed {r.seed} {r.subject}: {r.error}"
                                    for r in failed.itertuples()))
    return table


def run_stage(job: JobBase, client=None, progress: bool = True, subjects_per_unit: int = 8,
              steps: dict | None = None, **reduce_options) -> dict:
    """Stage 05: fit every unit of ``job`` (serially, or on a Dask ``client``), then reduce.

    Parameters
    ----------
    job : VolumeJob or MatrixJob
        From :func:`lib.encoding.volume_job` or :func:`lib.matrix_encoding.matrix_job`.
    client : dask.distributed.Client, optional
        Fit the units on this cluster (:mod:`lib.cluster`); serially when None.
    progress : bool
        Show a progress bar over the units.
    subjects_per_unit : int
        At most this many subjects (of one signature) share a unit.
    steps : dict, optional
        Response matrices: ``{condition: (step, tokens seen)}`` of the fine-tuning checkpoints,
        for the dose-response tables (:func:`lib.deltas.write_tables`).
    **reduce_options
        Volumes and surfaces: ``fdr_q``, ``re_min_subjects``, ``re_n_perm``
        (:func:`lib.reduction.reduce_volumes`).

    Returns
    -------
    dict
        The tables written (by name), ``conditions`` (the (condition, seed) pairs fitted) and
        ``units`` (each subject's status per unit).

    Raises
    ------
    lib.units.UnitsFailed
        After every other unit finished, naming each subject whose input was bad.
    """
    conditions, skipped = available_spaces(job)
    for r in skipped.itertuples():
        print(f"feature space {r.space} left out: {r.reason}")
    conditions = sorted(job.features) + conditions
    units = plan_units(job, conditions, subjects_per_unit)
    p_seeds = partition_seeds(job) if isinstance(job, VolumeJob) else []
    units += plan_units(job, [(PARTITION, sd) for sd in p_seeds], subjects_per_unit)
    status = run_units(job, units, client=client, progress=progress)
    if isinstance(job, MatrixJob):
        from .deltas import write_tables

        out = write_score_tables(job, conditions)
        out.update(write_tables(job, conditions, steps or {}))
    else:
        from .reduction import reduce_volumes

        out = reduce_volumes(job, conditions, p_seeds, skipped, client=client, **reduce_options)
    return dict(out, conditions=conditions, units=status)


# --------------------------------------------------------------------------- what the notebook shows
def summary_line(job: JobBase, res: dict) -> str:
    """One line: how much was fitted, on what, with which folds; synthetic data said so."""
    synthetic = bool(job.runs["synthetic_bold"].any())
    if isinstance(job, MatrixJob):
        return (f"{job.runs.subject.nunique()} subjects, {job.runs.story.nunique()} stories, "
                f"{res['component_scores'].target.nunique()} targets; folds: "
                f"{job.heldout()}; {'SYNTHETIC' if synthetic else 'real'} responses")
    from .geometry import load_geometry, n_targets, unit_name

    mask_img, scores = load_geometry(job.mask_path), res["scores"]
    return (f"{len(scores)} scores; mask has {n_targets(mask_img)} {unit_name(mask_img)}; "
            f"{'SYNTHETIC BOLD' if synthetic else 'real BOLD'}; folds: "
            f"{scores.fold_scheme.iloc[0]}")


def score_views(job: JobBase, res: dict) -> list[pd.DataFrame]:
    """Brain and chance scores: per set of targets and subject (matrices); per summary target,
    subject and run, then the mean voxel score per run (volumes, surfaces)."""
    sc, values = res["scores"], ["brain_score", "chance_score"]
    if isinstance(job, MatrixJob):
        return [sc.pivot_table(index=["targets", "condition"], columns="subject",
                               values=values).round(4)]
    vox = sc.target == "voxels_mean"
    return [sc[~vox].pivot_table(index=["target", "subject", "story", "run"],
                                 columns="condition", values=values).round(3),
            sc[vox].pivot_table(index=["subject", "story", "run"], columns="condition",
                                values=values).round(3)]


def layer_view(res: dict):
    """The layer profile: mean r per layer (columns: set of targets, condition, subject)."""
    lay = res["layer_scores"]
    if not len(lay):
        return "no layer profile in this run"
    target = "targets" if "targets" in lay else "target"
    return lay.pivot_table(index="layer", columns=[target, "condition", "subject"],
                           values="brain_score").round(4)


def statistics_views(job: JobBase, res: dict) -> list:
    """Matrices: Δ per subject and seed, the answer (seeds and subjects combined) and the
    dose-response. Volumes: group tests, noise ceilings, the partition, left-out spaces and the
    warnings raised while fitting."""
    if isinstance(job, MatrixJob):
        return [res["deltas"].round(5), res["answer"].round(5),
                res["dose"].round(5) if "dose" in res else "no fine-tuning checkpoints in this run"]
    nc, part, sc = res["noise_ceiling"], res["partition"], res["scores"]
    return [res["group_tests"],
            nc.pivot_table(index=["subject", "story", "run"], columns=["ceiling_kind", "target"],
                           values="noise_ceiling").round(3) if len(nc)
            else "fewer than 2 subjects per story: no noise ceiling",
            part.groupby(["target", "measure"]).r2.mean().unstack("measure").round(4)
            if len(part) else "no partition in this run (partition: [])",
            res["spaces_skipped"],
            sc.loc[sc.warnings.astype(str).str.len() > 0,
                   ["subject", "condition", "target", "alpha_edge_fraction", "warnings"]
                   ].drop_duplicates()]


def group_maps(job: VolumeJob, res: dict, fdr_q: float) -> None:
    """The group map of each permuted condition, FDR-thresholded (glass brain, or the mesh)."""
    import numpy as np

    from .geometry import load_geometry, unit_name
    from .plots import glass_brain, to_img

    mask_img = load_geometry(job.mask_path)
    tag = " [synthetic BOLD]" if job.runs["synthetic_bold"].any() else ""
    for cond, g in res["group"].items():
        if "fdr" in g:
            glass_brain(to_img(np.where(g["fdr"], g["score"], 0), mask_img),
                        f"{cond}: group brain score, FDR q<{fdr_q} ({int(g['fdr'].sum())} "
                        f"{unit_name(mask_img)}){tag}")
