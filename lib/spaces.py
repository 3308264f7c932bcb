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

import numpy as np

from .data import DataError


def tr_features(word_values: np.ndarray, word_trs: np.ndarray, n_trs: int, how: str = "sum",
                word_times: np.ndarray | None = None, tr: float = 1.5, window: int = 3
                ) -> np.ndarray:
    """(n_trs, d) features from (n_words, d) word values and each word's TR index."""
    word_values = np.asarray(word_values, np.float32)
    if word_values.ndim == 1:
        word_values = word_values[:, None]
    if len(word_values) != len(word_trs):
        raise DataError(f"{len(word_values)} word values but {len(word_trs)} word TRs")
    if how == "lanczos":
        if word_times is None:
            raise ValueError("lanczos aggregation needs the word onset times")
        return (lanczos_matrix(word_times, n_trs, tr, window) @ word_values).astype(np.float32)
    out = np.zeros((n_trs, word_values.shape[1]), np.float32)
    np.add.at(out, np.asarray(word_trs), word_values)
    if how == "mean":
        counts = np.bincount(word_trs, minlength=n_trs).astype(np.float32)
        out /= np.maximum(counts, 1)[:, None]
    elif how != "sum":
        raise ValueError(f"aggregation must be 'sum', 'mean' or 'lanczos', got {how!r}")
    return out


def lanczos_matrix(times: np.ndarray, n_trs: int, tr: float = 1.5, window: int = 3,
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


def mismatch(F: np.ndarray, kept: slice) -> np.ndarray:
    """Per-TR features with the kept TRs circularly shifted by half their number (the
    mismatched-story baseline: same features, same smoothness, wrong time)."""
    F = np.array(F, copy=True)
    k = F[kept]
    F[kept] = np.roll(k, len(k) // 2, axis=0)
    return F


def design_matrix(F: np.ndarray, kept: slice, delays=(1, 2, 3, 4, 5),
                  mismatched: bool = False) -> np.ndarray:
    """Delayed TR features on the full scan, then the kept (untrimmed) TRs."""
    if mismatched:
        F = mismatch(F, kept)
    return make_delays(F, delays)[kept]
