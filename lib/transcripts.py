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

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import write_csv, write_text
from .alignment import (WORD_COLUMNS, AlignmentError, interpolate_missing, join_words,  # noqa: F401
                        parse_gentle, read_align_csv, read_align_json,  # (re-exported)
                        read_alignment)
from .data import DataError, StoryTiming

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


#: texts sharing more than this share of word 4-grams are one stimulus (pieman / piemanpni)
OVERLAP_THRESHOLD = 0.05


def _grams(text: str, n: int = 4) -> set:
    w = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def _shared(ga: set, gb: set) -> float:
    return len(ga & gb) / max(1, min(len(ga), len(gb)))


def overlap(a: str, b: str) -> float:
    """Share of the smaller text's word 4-grams that the other text also has."""
    return _shared(_grams(a), _grams(b))


def stimulus_groups(texts: dict[str, str]) -> dict[str, str]:
    """Story -> its stimulus: stories whose texts overlap (:func:`overlap` above
    :data:`OVERLAP_THRESHOLD`, e.g. pieman and piemanpni, one recording heard in two studies) are
    one stimulus, named by the first of them alphabetically."""
    names = sorted(texts)
    group = {s: s for s in names}
    grams = {s: _grams(texts[s]) for s in names}      # once per story, not once per pair
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if _shared(grams[a], grams[b]) > OVERLAP_THRESHOLD:
                old, new = sorted((group[a], group[b]))[::-1]
                group = {s: new if g == old else g for s, g in group.items()}
    return group


def read_transcript(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    try:
        df = pd.read_csv(path, sep="\t", keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{path}: transcript not found (run stage 02 first)") from None
    if len(df) == 0:
        raise DataError(f"{path}: transcript is empty")
    df["aligned"] = df["aligned"].astype(str).str.lower().isin(["true", "1"])
    for c in ("onset", "offset"):     # empty for words known only by their TR
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


# --------------------------------------------------------------------------- SFT corpus
def story_text(words: pd.DataFrame, pause_s: float = PAUSE_S) -> str:
    """The story's text, one utterance per line (a new line where the pause before a word is at
    least ``pause_s``)."""
    text = words["text"].astype(str).to_numpy()
    if words["onset"].isna().all() and "tr" in words:   # words per TR: a silent TR is a pause
        gaps = np.diff(words["tr"].to_numpy(int)) - 1.0
        pause_s = 1.0
    else:
        gaps = words["onset"].to_numpy(float)[1:] - words["offset"].to_numpy(float)[:-1]
    cuts = np.r_[0, np.flatnonzero(gaps >= pause_s) + 1, len(text)]
    return "\n".join(join_words(text[a:b]) for a, b in zip(cuts[:-1], cuts[1:]) if b > a)


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
def _story_words(story: str, runs: pd.DataFrame, text_style: str) -> tuple[pd.DataFrame, str]:
    """A story's transcript from its Gentle alignment, or from the word file of a dataset
    adapter (:mod:`lib.datasets.words`); every run of the story must hold the same words."""
    from .data import timing_of_row
    from .datasets.words import read_words

    first = runs.iloc[0]
    words_path = str(first.get("words_path", "") or "")
    if words_path:
        df = read_words(words_path, float(first["tr"]), int(first["n_trs"]))
        for _, r in runs.iterrows():
            other = read_words(r["words_path"], float(r["tr"]), int(r["n_trs"]))
            if other["word"].tolist() != df["word"].tolist() or \
                    other["tr"].tolist() != df["tr"].tolist():
                raise DataError(f"{r['words_path']}: story {story!r} has other words or word "
                                f"TRs than {words_path}")
        return df, words_path
    if not first["alignment_path"]:
        raise DataError(f"story {story!r}: no alignment and no word file in the manifest")
    df = story_transcript(first["alignment_path"], first["transcript_path"] or None, text_style)
    for _, r in runs.iterrows():  # every run must hold the words
        tr = assign_trs(df, timing_of_row(r), int(r["n_trs"]), first["alignment_path"])
    df["tr"] = tr
    return df, first["alignment_path"]


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
    rows, texts, skipped, frames = [], {}, [], {}
    for story, runs in manifest.groupby("story"):   # everything is read and checked first
        df, source = _story_words(story, runs, text_style)
        frames[story] = df
        texts[story] = story_text(df, pause_s)
        tr = df["tr"].to_numpy(int)
        rows.append(dict(story=story, n_words=len(df),
                         word_times="per TR" if df["onset"].isna().all() else "onsets",
                         n_not_found=int((~df["aligned"]).sum()),
                         n_unk=int((df["aligned_word"] == "<unk>").sum()),
                         first_tr=int(tr.min()), last_tr=int(tr.max()), alignment=source))
    for story, df in frames.items():
        write_transcript(df, out_dir / f"{story}.tsv")
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
