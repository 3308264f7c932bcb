"""Stage 05's units of work, the same for every kind of target.

A *unit* fits one condition (an LM's activations, a feature space, a variance partition; one SFT
seed) for subjects who heard the same stories with the same TRs, so that they share the
features, the folds and every decomposition. Every kind of job -- volumes and surfaces
(:class:`lib.encoding.VolumeJob`), response matrices (:class:`lib.matrix_encoding.MatrixJob`) --
offers the same three methods (:class:`lib.job.JobBase`):

* ``unit_key(condition, seed, subject)``: the content hash of everything the subject's result
  depends on;
* ``fit(unit, subjects)``: ``(subject, (arrays, meta) or the exception)`` for each subject, in
  order; a subject whose input is bad fails alone, with its file named;
* ``result_path(condition, seed, subject)``: where the arrays go (``.npz`` and a ``.json``
  sidecar with the key).

:func:`plan_units` groups subjects into units, :func:`fit_unit` runs one unit (cached subjects
skipped); :func:`lib.stage05.run_units` runs every unit, serially or on Dask, and raises
:class:`UnitsFailed` after the others finished when some failed.
"""
from __future__ import annotations

from dataclasses import dataclass

from .cache import is_fresh, write_npz, write_sidecar
from .data import DataError


@dataclass(frozen=True)
class Unit:
    condition: str
    seed: int
    subjects: tuple


class UnitsFailed(DataError):
    """Some units failed on bad input; the others' results are kept."""


def plan_units(job, conditions, subjects_per_unit: int = 0) -> list[Unit]:
    """One unit per condition and group of subjects sharing a signature (``job.signature``), at
    most ``subjects_per_unit`` of them (0: all). Ordered group by group, so that consecutive
    units read the same subjects."""
    groups: dict[tuple, list[str]] = {}
    for s in sorted(job.runs.subject.unique()):
        groups.setdefault(job.signature(s), []).append(s)
    units = []
    for subs in groups.values():
        step = subjects_per_unit or len(subs)
        for i in range(0, len(subs), step):
            units += [Unit(c, int(sd), tuple(subs[i:i + step])) for c, sd in conditions]
    return units


def fit_unit(job, unit: Unit) -> list[dict]:
    """Fit ``unit`` for its subjects whose cached result is missing or stale. Returns one status
    per subject: ``{"subject", "status": "cached"|"fitted"|"failed", "error"}``."""
    from .engine import EngineError

    status, todo = {}, {}
    for sub in unit.subjects:
        try:
            key = job.unit_key(unit.condition, unit.seed, sub)
        except (DataError, EngineError, OSError) as e:
            status[sub] = dict(subject=sub, status="failed", error=str(e))
            continue
        if is_fresh(job.result_path(unit.condition, unit.seed, sub), key):
            status[sub] = dict(subject=sub, status="cached", error="")
        else:
            todo[sub] = key
    for sub, outcome in job.fit(unit, list(todo)):
        if isinstance(outcome, Exception):
            status[sub] = dict(subject=sub, status="failed", error=str(outcome))
            continue
        arrays, meta = outcome
        path = job.result_path(unit.condition, unit.seed, sub)
        write_npz(path, **arrays)
        write_sidecar(path, todo[sub], **meta)
        status[sub] = dict(subject=sub, status="fitted", error="")
    return [status[s] for s in unit.subjects]
