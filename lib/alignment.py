"""Gentle word alignments: parsing ``align.csv`` / ``align.json`` and filling in the times of
words Gentle did not find (linearly, between found neighbours). Used by stage 01 (the last
word's TR) and stage 02 (transcripts); imports nothing of the pipeline but its error type."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError

WORD_COLUMNS = ["word", "aligned_word", "onset", "offset", "aligned"]

#: Contractions that word tables split off the word before them (Penn Treebank style: "do n't",
#: "it 's"). They belong to the previous word in running text, so they are joined without a
#: space, and tokenised without the leading space every other word gets ("'bout" is a word).
CLITICS = frozenset({"n't", "'s", "'re", "'ve", "'m", "'ll", "'d"})


def is_clitic(word: str) -> bool:
    return str(word).replace("\u2019", "'").lower() in CLITICS


def join_words(words) -> str:
    """Words as running text: single spaces, none before a clitic (``do n't`` -> ``don't``)."""
    out = []
    for w in map(str, words):
        if out and is_clitic(w):
            out[-1] += w
        else:
            out.append(w)
    return " ".join(out)


class AlignmentError(DataError):
    """A Gentle alignment that cannot be used; the message names the file."""


# --------------------------------------------------------------------------- parsing
def _num(x: str, path: Path, lineno: int, what: str) -> float:
    if x is None or str(x).strip() == "":
        return math.nan
    try:
        v = float(x)
    except ValueError:
        raise AlignmentError(f"{path}: line {lineno}: {what} {x!r} is not a number") from None
    if not math.isfinite(v) or v < 0:
        raise AlignmentError(f"{path}: line {lineno}: {what} {x!r} is not a time >= 0")
    return v


def read_align_csv(path: str | Path) -> pd.DataFrame:
    """Gentle's headerless ``align.csv``: word, aligned word or ``<unk>``, onset, offset.

    Empty onset/offset = not found in the audio (times are NaN here, interpolated later).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AlignmentError(f"{path}: alignment file not found") from None
    rows = []
    for lineno, rec in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not rec:
            continue
        if len(rec) != 4:
            raise AlignmentError(f"{path}: line {lineno}: expected 4 fields (word, aligned word, "
                                 f"onset, offset), got {len(rec)}: {rec!r}")
        word, aligned, on, off = rec
        if not word.strip():
            raise AlignmentError(f"{path}: line {lineno}: empty word")
        on, off = _num(on, path, lineno, "onset"), _num(off, path, lineno, "offset")
        if math.isnan(on) != math.isnan(off):
            raise AlignmentError(f"{path}: line {lineno}: onset and offset must both be set or "
                                 f"both empty")
        if not math.isnan(on) and off < on:
            raise AlignmentError(f"{path}: line {lineno}: offset {off} before onset {on}")
        rows.append((word, aligned, on, off))
    if not rows:
        raise AlignmentError(f"{path}: no words")
    df = pd.DataFrame(rows, columns=["word", "aligned_word", "onset", "offset"])
    _check_monotonic(df, path, first_line=1)
    return df


def read_align_json(path: str | Path) -> pd.DataFrame:
    """Gentle's JSON output (``transcript`` + ``words[]`` with ``case``/``start``/``end``)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AlignmentError(f"{path}: alignment file not found") from None
    except ValueError as e:
        raise AlignmentError(f"{path}: not valid JSON ({e})") from None
    return parse_gentle(obj, path)


def parse_gentle(obj, source: str | Path = "<gentle>") -> pd.DataFrame:
    if not isinstance(obj, dict) or not isinstance(obj.get("words"), list) \
            or "transcript" not in obj:
        raise AlignmentError(f"{source}: not Gentle output (expected an object with "
                             f"'transcript' and a 'words' list)")
    rows = []
    for i, w in enumerate(obj["words"]):
        if not isinstance(w, dict) or "word" not in w or "case" not in w:
            raise AlignmentError(f"{source}: words[{i}] is not a Gentle word "
                                 f"(needs 'word' and 'case')")
        if w["case"] == "success":
            if "start" not in w or "end" not in w:
                raise AlignmentError(f"{source}: words[{i}] succeeded but has no start/end")
            on, off = float(w["start"]), float(w["end"])
            if off < on or on < 0:
                raise AlignmentError(f"{source}: words[{i}]: bad times start={on} end={off}")
        else:
            on = off = math.nan
        rows.append((w["word"], w.get("alignedWord", "<unk>"), on, off))
    if not rows:
        raise AlignmentError(f"{source}: no words")
    df = pd.DataFrame(rows, columns=["word", "aligned_word", "onset", "offset"])
    _check_monotonic(df, source, first_line=None)
    return df


def _check_monotonic(df: pd.DataFrame, source, first_line: int | None) -> None:
    on = df["onset"].to_numpy()
    idx = np.flatnonzero(~np.isnan(on))
    bad = np.flatnonzero(np.diff(on[idx]) < -1e-6)
    if len(bad):
        j = idx[bad[0] + 1]
        where = f"line {j + first_line}" if first_line is not None else f"word {j}"
        raise AlignmentError(f"{source}: {where}: onset {on[j]} goes back in time (previous "
                             f"found word starts at {on[idx[bad[0]]]}); onsets must not decrease")


def read_alignment(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    df = read_align_json(path) if path.suffix == ".json" else read_align_csv(path)
    return interpolate_missing(df)


def interpolate_missing(df: pd.DataFrame) -> pd.DataFrame:
    """Fill times of words not found in the audio (see module docstring); add ``aligned``."""
    df = df.copy()
    on, off = df["onset"].to_numpy(float).copy(), df["offset"].to_numpy(float).copy()
    found = ~np.isnan(on)
    if not found.any():
        raise AlignmentError("no word of the alignment was found in the audio")
    n, i = len(df), 0
    while i < n:
        if found[i]:
            i += 1
            continue
        j = i
        while j < n and not found[j]:
            j += 1
        a = off[i - 1] if i > 0 else on[j]
        b = on[j] if j < n else off[i - 1]
        k = j - i
        edges = np.linspace(a, max(a, b), k + 1)
        on[i:j], off[i:j] = edges[:-1], edges[1:]
        i = j
    df["onset"], df["offset"], df["aligned"] = on, off, found
    return df


# --------------------------------------------------------------------------- punctuation
