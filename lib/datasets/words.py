"""Word tables that are not Gentle alignments: timed words, or words per TR.

Both become the stage-02 transcript (``word, text, aligned_word, onset, offset, aligned, tr``):

* a timed table (``.tsv``/``.csv`` with ``word`` and ``onset`` in seconds from the run's first
  kept TR, optional ``offset``): ``tr = floor(onset / TR)``, as for Gentle words;
* words per TR (an ``.npz`` with ``words``: one string per TR, space-separated, '' = silence; or a
  table with ``word`` and ``tr``): each word's TR is given, its onset is not (NaN). ``sum`` and
  ``mean`` aggregation need only the TR; Lanczos interpolation needs onsets and refuses these.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data import DataError

COLUMNS = ["word", "text", "aligned_word", "onset", "offset", "aligned", "tr"]


def _frame(words: list[str], trs, onsets=None, offsets=None) -> pd.DataFrame:
    n = len(words)
    nan = np.full(n, np.nan)
    return pd.DataFrame(dict(word=words, text=words, aligned_word=[w.lower() for w in words],
                             onset=nan if onsets is None else np.asarray(onsets, float),
                             offset=nan if offsets is None else np.asarray(offsets, float),
                             aligned=onsets is not None, tr=np.asarray(trs, int)),
                        columns=COLUMNS)


def words_per_tr(per_tr, source) -> pd.DataFrame:
    """Transcript from one string of words per TR."""
    words, trs = [], []
    for i, s in enumerate(per_tr):
        for w in str(s).split():
            words.append(w)
            trs.append(i)
    if not words:
        raise DataError(f"{source}: no words in any TR")
    return _frame(words, trs)


def _table(path: Path) -> pd.DataFrame:
    sep = "," if path.suffix == ".csv" else "\t"
    try:
        df = pd.read_csv(path, sep=sep, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{path}: word table not found") from None
    except (ValueError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: not a readable word table ({e})") from None
    if "word" not in df:
        raise DataError(f"{path}: a word table needs a 'word' column (has {list(df.columns)})")
    if "onset" not in df and "tr" not in df:
        raise DataError(f"{path}: a word table needs 'onset' (seconds) or 'tr' (TR index)")
    return df


def _numbers(df: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    v = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
    bad = np.flatnonzero(~np.isfinite(v) | (v < 0))
    if len(bad):
        raise DataError(f"{path}: row {bad[0] + 2}: {col} {df[col].iloc[bad[0]]!r} is not a "
                        f"number >= 0")
    return v


def read_words(path: str | Path, tr: float, n_trs: int) -> pd.DataFrame:
    """The transcript of a run from its word file, checked against the run's ``n_trs`` TRs."""
    path = Path(path)
    if path.suffix == ".npz":
        try:
            with np.load(path) as z:
                if "words" not in z.files:
                    raise DataError(f"{path}: no 'words' array (words per TR)")
                per_tr = z["words"]
        except FileNotFoundError:
            raise DataError(f"{path}: word file not found") from None
        if len(per_tr) != n_trs:
            raise DataError(f"{path}: {len(per_tr)} rows of words per TR but the responses "
                            f"have {n_trs} TRs")
        return words_per_tr(per_tr, path)
    df = _table(path)
    words = df["word"].astype(str).str.strip().tolist()
    if any(not w for w in words):
        raise DataError(f"{path}: row {words.index('') + 2}: empty word")
    if "onset" in df:
        on = _numbers(df, "onset", path)
        if np.any(np.diff(on) < 0):
            raise DataError(f"{path}: onsets are not in time order")
        off = _numbers(df, "offset", path) if "offset" in df else None
        trs = np.floor(on / float(tr) + 1e-9).astype(int)
        out = _frame(words, trs, on, off)
    else:
        trs = _numbers(df, "tr", path)
        if np.any(trs != np.round(trs)) or np.any(np.diff(trs) < 0):
            raise DataError(f"{path}: 'tr' must be whole TR indices in time order")
        out = _frame(words, trs.astype(int))
    if out["tr"].max() >= n_trs:
        raise DataError(f"{path}: words reach TR {int(out['tr'].max())} but the responses have "
                        f"{n_trs} TRs (TR {tr} s)")
    return out
