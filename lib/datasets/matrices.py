"""Response matrices: (TRs x targets) series of ROIs, parcels or components, one file per run.

:func:`read_matrix` reads ``.npy``, ``.npz`` (array ``pcs``, ``responses`` or the only array),
``.csv`` and ``.tsv`` (a header row, one column per target), with clear errors. NaN rows are
refused: a run with missing TRs must be cut or filled before it is modelled.

:func:`lebel_manifest` is the adapter of the LeBel et al. (2023) files shipped under
``data/lebel`` (see its README): ``<SUBJECT>/<story>.npz`` with ``pcs`` (response components)
and ``words`` (words per TR), ``stories.csv`` naming each story's split (the dataset's own
train/test split), and ``dataset.json`` holding the TR (``RepetitionTime``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import MANIFEST_COLUMNS, DataError
from .words import read_words

MATRIX_SUFFIXES = (".npy", ".npz", ".csv", ".tsv")


def read_matrix(path: str | Path) -> np.ndarray:
    """(n_trs, n_targets) float32 responses of one run."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: response file not found")
    try:
        if path.suffix == ".npy":
            Y = np.load(path)
        elif path.suffix == ".npz":
            with np.load(path) as z:
                names = [n for n in ("pcs", "responses") if n in z.files]
                arrays = [n for n in z.files if z[n].dtype.kind in "fiu"]
                if not names and len(arrays) != 1:
                    raise DataError(f"{path}: no 'pcs' or 'responses' array, and not exactly "
                                    f"one numeric array (has {z.files})")
                Y = z[names[0] if names else arrays[0]]
        elif path.suffix in (".csv", ".tsv"):
            Y = pd.read_csv(path, sep="," if path.suffix == ".csv" else "\t").to_numpy(float)
        else:
            raise DataError(f"{path}: responses must be one of {MATRIX_SUFFIXES} (or a NIfTI)")
    except DataError:
        raise
    except Exception as e:  # numpy and pandas raise several types for bad files
        raise DataError(f"{path}: not a readable response matrix ({e})") from None
    Y = np.asarray(Y, np.float32)
    if Y.ndim != 2 or Y.shape[1] == 0:
        raise DataError(f"{path}: responses must be a (TRs x targets) matrix, got {Y.shape}")
    bad = np.flatnonzero(~np.isfinite(Y).all(1))
    if len(bad):
        raise DataError(f"{path}: {len(bad)} rows hold NaN or inf (first: TR {bad[0]}); cut or "
                        f"fill them before modelling")
    return Y


def matrix_row(subject, story, run, path, n_trs, tr, words_path, split, synthetic=False,
               trim_start=0, trim_end=0) -> dict:
    """A manifest row for a run whose responses are a matrix (no scan-time story offsets: row 0
    of the matrix is the first TR of the words)."""
    return dict(subject=subject, story=story, run=int(run), bold_path=str(path),
                n_trs=int(n_trs), tr=float(tr), alignment_path="", transcript_path="",
                audio_start_s=0.0, trim_start=int(trim_start), trim_end=int(trim_end),
                story_onset_tr=0, story_duration_tr=int(n_trs), excluded=False,
                exclusion_reason="", synthetic_bold=bool(synthetic), audio_path="",
                responses="matrix", words_path=str(words_path), split=str(split or ""))


def check_splits(df: pd.DataFrame, source) -> None:
    """A story is in one split only (else the test stories would be trained on)."""
    s = df[df["split"] != ""].groupby("story")["split"].nunique()
    both = sorted(s[s > 1].index)
    if both:
        raise DataError(f"{source}: stories in more than one split: {', '.join(both)}")
    bad = sorted(set(df["split"]) - {"", "train", "test"})
    if bad:
        raise DataError(f"{source}: split must be 'train' or 'test', got {bad}")


def check_subjects(df: pd.DataFrame, subjects, source) -> None:
    if subjects:
        missing = sorted(set(subjects) - set(df["subject"]))
        if missing:
            raise DataError(f"{source}: unknown subjects {', '.join(missing)} (it has "
                            f"{', '.join(sorted(set(df['subject'])))})")


def dataset_tr(root: Path, tr: float | None) -> float:
    """The TR from ``<root>/dataset.json`` (``RepetitionTime``), else the profile's ``tr``."""
    side = Path(root) / "dataset.json"
    if side.exists():
        try:
            meta = json.loads(side.read_text())
        except ValueError as e:
            raise DataError(f"{side}: not valid JSON ({e})") from None
        if "RepetitionTime" in meta:
            return float(meta["RepetitionTime"])
    if tr is None:
        raise DataError(f"{root}: no TR: neither {side.name} (RepetitionTime) nor the profile "
                        f"(tr: seconds) gives one")
    return float(tr)


def lebel_manifest(root: str | Path, subjects=None, stories=None, tr: float | None = None,
                   max_train_stories: int | None = None) -> pd.DataFrame:
    """Manifest of the LeBel files: every (subject, story) of ``stories.csv`` (or the listed
    ``subjects`` and ``stories``; ``max_train_stories`` keeps the first N train stories in
    the table's order, every test story stays)."""
    root = Path(root)
    table = root / "stories.csv"
    try:
        st = pd.read_csv(table, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{table}: not found (the LeBel files' index)") from None
    need = {"subject", "story", "split", "n_trs"}
    if need - set(st.columns):
        raise DataError(f"{table}: lacks columns {sorted(need - set(st.columns))}")
    st["split"] = st["split"].astype(str)
    check_subjects(st, subjects, table)
    if subjects:
        st = st[st.subject.isin(subjects)]
    if stories:
        unknown = sorted(set(stories) - set(st.story))
        if unknown:
            raise DataError(f"{table}: unknown stories {', '.join(unknown)}")
        st = st[st.story.isin(stories)]
    if max_train_stories is not None:
        keep = list(dict.fromkeys(st.loc[st.split == "train", "story"]))[:int(max_train_stories)]
        st = st[(st.split != "train") | st.story.isin(keep)]
    check_splits(st, table)
    tr = dataset_tr(root, tr)
    rows = []
    for r in st.itertuples():
        path = root / r.subject / f"{r.story}.npz"
        n = len(read_matrix(path))
        if n != int(r.n_trs):
            raise DataError(f"{path}: {n} TRs but {table.name} says {r.n_trs}")
        read_words(path, tr, n)       # words per TR: one row per response row
        rows.append(matrix_row(r.subject, r.story, 1, path, n, tr, path, r.split))
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    return df.sort_values(["subject", "story", "run"]).reset_index(drop=True)
