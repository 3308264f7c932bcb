"""Stage 02: Gentle word alignments -> timed transcripts, word->TR assignment, SFT corpus.

Conventions (documented in the README and tested):

* Gentle times are seconds from the start of the story's audio file; scan time adds the story's
  ``audio_start_s`` (pieman 0 s, tunnel 3 s).
* Words Gentle did not find in the audio get times interpolated linearly in word order between
  the found neighbours: a run of k missing words between the previous found word's offset ``a``
  and the next found word's onset ``b`` gets equal slices of [a, b]. Missing words before the first
  (after the last) found word take its onset (offset). The ``aligned`` column says which is which.
* Word -> TR: ``tr_index = floor((onset + audio_start_s) / TR)`` (the TR in which the word starts).
* Text style (``text_style``), the same for the text a model reads when it is scored and the text
  it is fine-tuned on: ``words`` (default) = Gentle's words as spoken, cased, without punctuation
  (every story has them); ``punctuated`` = each word with the punctuation that follows it in the
  official transcript -- only stories with a ``transcript.txt`` can then be used, scored or
  trained on (the committed copy has 4 of 26).
* Utterances: the SFT corpus keeps one utterance per line, split where the speaker pauses for at
  least ``pause_s`` (0.5 s: ~9 words per line in pieman, about a clause). The lines let stage 04
  shuffle words within utterances (control) or utterances across stories (scrambled control);
  models read the text with the line breaks turned into spaces (:func:`flatten`).
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import write_csv, write_text
from .data import DataError, StoryTiming

WORD_COLUMNS = ["word", "aligned_word", "onset", "offset", "aligned"]


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
_PUNCT_AFTER = re.compile(r"[^\s]*")


def attach_punctuation(words: list[str], transcript: str) -> list[str]:
    """Give each aligned word the punctuation that follows it in the official transcript.

    Gentle's words carry no punctuation; language models read text with it. Each word is looked up
    in order in the transcript; where it is found the following non-space characters are kept
    (``reporter`` -> ``reporter,``). Words not found are left as they are.
    """
    text = transcript.replace("\u2019", "'").replace("\u2018", "'")
    low = text.lower()
    pos, out = 0, []
    for w in words:
        wl = w.replace("\u2019", "'").lower()
        j = low.find(wl, pos)
        if j < 0 or j - pos > 200:  # not nearby: leave the word alone, do not jump ahead
            out.append(w)
            continue
        end = j + len(wl)
        tail = _PUNCT_AFTER.match(text, end).group(0)
        out.append(w + tail if tail and not any(c.isalnum() for c in tail) else w)
        pos = end
    return out


# --------------------------------------------------------------------------- word -> TR
def assign_trs(words: pd.DataFrame, timing: StoryTiming, n_trs: int,
               source: str | Path = "") -> np.ndarray:
    """TR index of each word: floor((onset + audio_start) / TR). Errors if a word is off the scan."""
    t = words["onset"].to_numpy(float) + timing.audio_start_s
    tr = np.floor(t / timing.tr + 1e-9).astype(int)
    if len(tr) and (tr.min() < 0 or tr.max() >= n_trs):
        raise DataError(f"{source}: words fall in TRs {tr.min()}..{tr.max()}, outside the "
                        f"{n_trs}-TR scan (audio starts at {timing.audio_start_s} s)")
    return tr


TEXT_STYLES = ("words", "punctuated")
PAUSE_S = 0.5


def story_transcript(alignment_path: str | Path, transcript_path: str | Path | None = None,
                     text_style: str = "words") -> pd.DataFrame:
    """Timed words of a story: word, the text the model reads (see ``text_style``), times, flag."""
    if text_style not in TEXT_STYLES:
        raise ValueError(f"text_style must be one of {TEXT_STYLES}, got {text_style!r}")
    df = read_alignment(alignment_path)
    if text_style == "punctuated":
        if not transcript_path or not Path(transcript_path).exists():
            raise DataError(f"{alignment_path}: text_style 'punctuated' needs the story's "
                            f"transcript.txt next to it ({transcript_path or 'none given'})")
        df["text"] = attach_punctuation(df["word"].tolist(),
                                        Path(transcript_path).read_text(encoding="utf-8"))
    else:
        df["text"] = df["word"]
    return df[["word", "text", "aligned_word", "onset", "offset", "aligned"]]


def write_transcript(df: pd.DataFrame, path: str | Path) -> Path:
    return write_csv(path, df, sep="\t")


def read_transcript(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    try:
        df = pd.read_csv(path, sep="\t", keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{path}: transcript not found (run stage 02 first)") from None
    if len(df) == 0:
        raise DataError(f"{path}: transcript is empty")
    df["aligned"] = df["aligned"].astype(str).str.lower().isin(["true", "1"])
    return df


# --------------------------------------------------------------------------- SFT corpus
def story_text(words: pd.DataFrame, pause_s: float = PAUSE_S) -> str:
    """The story's text, one utterance per line (a new line where the pause before a word is at
    least ``pause_s``)."""
    text = words["text"].astype(str).to_numpy()
    gaps = words["onset"].to_numpy(float)[1:] - words["offset"].to_numpy(float)[:-1]
    cuts = np.r_[0, np.flatnonzero(gaps >= pause_s) + 1, len(text)]
    return "\n".join(" ".join(text[a:b]) for a, b in zip(cuts[:-1], cuts[1:]) if b > a)


def flatten(text: str) -> str:
    """Text as a model reads it: utterance lines joined by single spaces."""
    return " ".join(text.split())


def write_corpus(texts: dict[str, str], path: str | Path) -> pd.DataFrame:
    """``train_narratives.txt``: stories separated by blank lines, plus ``<name>.index.csv``
    giving each story's character span so later stages can hold stories out."""
    path = Path(path)
    parts, rows, pos = [], [], 0
    for story in sorted(texts):
        t = texts[story].strip()
        rows.append(dict(story=story, start=pos, end=pos + len(t), n_words=len(t.split())))
        parts.append(t)
        pos += len(t) + 2
    write_text(path, "\n\n".join(parts) + "\n")
    index = pd.DataFrame(rows)
    write_csv(corpus_index_path(path), index)
    return index


def corpus_index_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".index.csv")


def read_corpus(path: str | Path) -> dict[str, str]:
    """Stories of a corpus written by :func:`write_corpus`, by name."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    idx = corpus_index_path(path)
    if not idx.exists():
        return {path.stem: text}
    index = pd.read_csv(idx)
    return {r.story: text[r.start:r.end] for r in index.itertuples()}


# --------------------------------------------------------------------------- Gentle server
class GentleError(RuntimeError):
    pass


def gentle_align(audio: str | Path, transcript: str | Path, url: str = "http://localhost:8765",
                 timeout: float = 600.0, out: str | Path | None = None) -> pd.DataFrame:
    """Align new audio with a running Gentle server (``lowerquality/gentle``).

    POSTs the audio and transcript to ``<url>/transcriptions?async=false`` and parses the JSON it
    returns; with ``out`` the raw JSON is also saved (atomically) as ``align.json``.
    """
    import requests

    audio, transcript = Path(audio), Path(transcript)
    for p in (audio, transcript):
        if not p.exists():
            raise GentleError(f"{p}: file not found")
    endpoint = url.rstrip("/") + "/transcriptions?async=false"
    try:
        with open(audio, "rb") as fa, open(transcript, "rb") as ft:
            r = requests.post(endpoint, files={"audio": fa, "transcript": ft}, timeout=timeout)
    except requests.Timeout:
        raise GentleError(f"Gentle at {url} did not answer within {timeout} s") from None
    except requests.ConnectionError as e:
        raise GentleError(f"could not reach Gentle at {url} ({e.__class__.__name__}); is the "
                          f"server running? (docker run -p 8765:8765 lowerquality/gentle)") from None
    if r.status_code != 200:
        raise GentleError(f"Gentle at {url} answered HTTP {r.status_code}: {r.text[:200]}")
    try:
        obj = r.json()
    except ValueError:
        raise GentleError(f"Gentle at {url} answered with something that is not JSON: "
                          f"{r.text[:200]!r}") from None
    df = parse_gentle(obj, source=endpoint)
    if out is not None:
        write_text(out, json.dumps(obj))
    return interpolate_missing(df)


# --------------------------------------------------------------------------- stage runner
def build_transcripts(manifest: pd.DataFrame, out_dir: str | Path, corpus_sources=(),
                      corpus_path: str | Path | None = None, text_style: str = "words",
                      pause_s: float = PAUSE_S) -> dict:
    """Stage 02: ``<out_dir>/<story>.tsv`` for every story in the manifest (checked against each
    run's TR count), and the SFT corpus ``train_narratives.txt`` from every story with an alignment
    (manifest stories + the ``corpus_sources`` folders of ``<story>/align.csv``).

    Returns {"stories": table of scored stories, "corpus": corpus index, "skipped": corpus stories
    left out (``punctuated`` style without a transcript)}.
    """
    out_dir = Path(out_dir)
    rows, texts, skipped = [], {}, []
    for story, runs in manifest.groupby("story"):
        first = runs.iloc[0]
        if not first["alignment_path"]:
            raise DataError(f"story {story!r}: no alignment in the manifest")
        df = story_transcript(first["alignment_path"], first["transcript_path"] or None,
                              text_style)
        from .data import timing_of_row

        for _, r in runs.iterrows():  # every run must hold the words
            tr = assign_trs(df, timing_of_row(r), int(r["n_trs"]), first["alignment_path"])
        df["tr"] = tr
        write_transcript(df, out_dir / f"{story}.tsv")
        texts[story] = story_text(df, pause_s)
        rows.append(dict(story=story, n_words=len(df), n_not_found=int((~df["aligned"]).sum()),
                         n_unk=int((df["aligned_word"] == "<unk>").sum()),
                         first_tr=int(tr.min()), last_tr=int(tr.max()),
                         alignment=first["alignment_path"]))
    for src in corpus_sources:
        for align in sorted(Path(src).glob("*/align.csv")):
            story = align.parent.name
            if story in texts:
                continue
            tpath = align.parent / "transcript.txt"
            if text_style == "punctuated" and not tpath.exists():
                skipped.append(story)
                continue
            texts[story] = story_text(story_transcript(align, tpath, text_style), pause_s)
    corpus = write_corpus(texts, corpus_path or out_dir / "train_narratives.txt")
    return {"stories": pd.DataFrame(rows), "corpus": corpus, "skipped": skipped}
