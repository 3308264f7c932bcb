"""The generic adapter: any story-listening dataset described by one table, ``runs.tsv``.

``<root>/runs.tsv`` has one row per run and the columns

* ``subject``, ``story`` (required), ``run`` (default 1);
* ``responses``: a BOLD NIfTI (``.nii``/``.nii.gz``, read inside the stage-05 mask) or a matrix of
  ROI / parcel / component series (``.npy``, ``.npz``, ``.csv``, ``.tsv``: TRs x targets);
* ``words``: a word table (``.tsv``/``.csv`` with ``word`` and ``onset`` in seconds from the
  run's first TR, optional ``offset``; or ``word`` and ``tr``), or an ``.npz`` of words per TR;
* ``tr`` (optional): seconds. Without it the TR comes from a JSON sidecar next to the responses
  (``RepetitionTime``, BIDS style), then from ``<root>/dataset.json``, then from the profile;
* ``split`` (optional): ``train`` / ``test``. With a split, stage 05 fits on the train stories and
  scores the test stories; without one it leaves one story out.

Paths are relative to ``root``. Every run is checked (readable responses, no NaN rows, words that
fit in the run) before anything is written.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..data import MANIFEST_COLUMNS, DataError, bold_header
from .matrices import (check_splits, check_subjects, dataset_tr, matrix_row, read_matrix)
from .words import read_words

NIFTI_SUFFIXES = (".nii", ".gz")


def _sidecar_tr(responses: Path) -> float | None:
    name = responses.name
    for suf in (".nii.gz", ".nii", ".npy", ".npz", ".csv", ".tsv"):
        if name.endswith(suf):
            side = responses.with_name(name[: -len(suf)] + ".json")
            if side.exists():
                try:
                    meta = json.loads(side.read_text())
                except ValueError as e:
                    raise DataError(f"{side}: not valid JSON ({e})") from None
                if "RepetitionTime" not in meta:
                    raise DataError(f"{side}: sidecar has no RepetitionTime")
                return float(meta["RepetitionTime"])
    return None


def _run_tr(row, responses: Path, root: Path, tr: float | None, table: Path) -> float:
    given = str(row.get("tr", "") or "").strip()
    if given:
        try:
            return float(given)
        except ValueError:
            raise DataError(f"{table}: tr {given!r} of {row['subject']} {row['story']} is not a "
                            f"number") from None
    side = _sidecar_tr(responses)
    if side is not None:
        return side
    try:
        return dataset_tr(root, tr)
    except DataError:
        raise DataError(f"{responses}: no TR: no 'tr' column in {table.name}, no sidecar "
                        f"JSON with RepetitionTime, no {root / 'dataset.json'} and no 'tr' in the "
                        f"profile") from None


def generic_manifest(root: str | Path, subjects=None, stories=None, tr: float | None = None,
                     synthetic: bool = False) -> pd.DataFrame:
    root = Path(root)
    table = root / "runs.tsv"
    try:
        runs = pd.read_csv(table, sep="\t", keep_default_na=False, dtype=str)
    except FileNotFoundError:
        raise DataError(f"{table}: not found (the generic dataset's table of runs)") from None
    need = {"subject", "story", "responses", "words"}
    if need - set(runs.columns):
        raise DataError(f"{table}: lacks columns {sorted(need - set(runs.columns))}")
    runs["split"] = runs["split"].str.strip() if "split" in runs else ""
    runs["run"] = runs["run"] if "run" in runs else "1"
    check_subjects(runs, subjects, table)
    if subjects:
        runs = runs[runs.subject.isin(subjects)]
    if stories:
        runs = runs[runs.story.isin(stories)]
    if runs.empty:
        raise DataError(f"{table}: no run left for subjects {subjects} and stories {stories}")
    check_splits(runs, table)
    rows = []
    for _, r in runs.iterrows():
        resp, words = root / r["responses"], root / r["words"]
        t = _run_tr(r, resp, root, tr, table)
        if resp.name.endswith(NIFTI_SUFFIXES) and ".nii" in resp.name:
            n, _, _ = bold_header(resp)
            row = matrix_row(r["subject"], r["story"], r["run"], resp, n, t, words, r["split"],
                             synthetic)
            row["responses"] = "nifti"
        else:
            n = len(read_matrix(resp))
            row = matrix_row(r["subject"], r["story"], r["run"], resp, n, t, words, r["split"],
                             synthetic)
        read_words(words, t, n)
        rows.append(row)
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    dup = df.duplicated(["subject", "story", "run"])
    if dup.any():
        first = df[dup].iloc[0]
        raise DataError(f"{table}: {first.subject} {first.story} run {first.run} is listed twice")
    return df.sort_values(["subject", "story", "run"]).reset_index(drop=True)
