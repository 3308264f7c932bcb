"""Synthetic held-out responses and predictions for calibrating the within-subject comparisons
(:mod:`lib.engine.paired`, :mod:`lib.engine.combine`). Every series is as smooth as real BOLD
(AR(phi), phi 0.85-0.95 at TR 1.5-2 s), never white. Used by the tests and by
``bench/validity_paired.py``; SYNTHETIC by construction.
"""
from __future__ import annotations

import numpy as np

#: the three LeBel test stories (TRs) and all 30 LeBel stories (the powered design's held-out time)
TEST_LENS = (291, 348, 271)
ALL_LENS = (241, 343, 388, 521, 500, 279, 349, 370, 394, 326, 354, 302, 332, 400, 360, 384,
            404, 296, 437, 489, 280, 314, 454, 171, 323, 391, 189, 348, 271, 291)
SIGNAL = 0.3         # response = SIGNAL x shared signal + unit noise


def ar1(rng: np.random.Generator, n: int, m: int, phi) -> np.ndarray:
    """(n, m) unit-variance AR(1) series (``phi`` a number or one per column), float64."""
    from scipy.signal import lfilter

    phi = float(phi)
    e = rng.standard_normal((n, m))
    e[1:] *= np.sqrt(1 - phi ** 2)
    return lfilter([1.0], [1.0, -phi], e, axis=0)


def rho(noise_sd: float) -> float:
    """Population r of a prediction (signal + noise_sd x unit noise) with the response."""
    return SIGNAL / np.sqrt((1 + SIGNAL ** 2) * (1 + noise_sd ** 2))


def matched_noise(noise_sd: float, seed_sd: float) -> float:
    """The noise of a model whose population r equals the mean over seeds of models with noise
    noise_sd x exp(seed_sd x u), u ~ N(0, 1): with it, the true Δ over seeds is exactly 0."""
    u, wts = np.polynomial.hermite_e.hermegauss(40)
    mean_r = float((wts * np.array([rho(noise_sd * np.exp(seed_sd * v)) for v in u])).sum()
                   / wts.sum())
    return float(np.sqrt((SIGNAL / (mean_r * np.sqrt(1 + SIGNAL ** 2))) ** 2 - 1))


def responses(rng, lens=TEST_LENS, k: int = 10, phi: float = 0.9):
    """(y, signal, story of each row) for stories of ``lens`` TRs and ``k`` targets."""
    sig = np.vstack([ar1(rng, n, k, phi) for n in lens])
    y = SIGNAL * sig + np.vstack([ar1(rng, n, k, phi) for n in lens])
    return y, sig, np.repeat(np.arange(len(lens)), lens)


def prediction(rng, sig: np.ndarray, lens, phi: float, noise_sd: float = 1.5,
               shared: np.ndarray | None = None, share: float = 0.0) -> np.ndarray:
    """signal + noise_sd x noise; a fraction ``share`` of the noise variance is ``shared``
    (the part that seeds of one fine-tuned model have in common)."""
    own = np.vstack([ar1(rng, n, sig.shape[1], phi) for n in lens])
    noise = own if shared is None else np.sqrt(share) * shared + np.sqrt(1 - share) * own
    return sig + noise_sd * noise


def seeded_models(rng, sig, lens, phi: float, n_seeds: int, seed_sd: float,
                  seed_effects: np.ndarray | None = None, share: float = 0.8):
    """(predictions of model A's seeds, prediction of model B): A's seed s has noise
    1.5 x exp(seed_sd x u_s), B the matched noise, so the true Δ(A - B) over seeds is 0.
    ``seed_effects`` (u_s) are drawn unless given (subjects scored by the same models share
    them)."""
    u = rng.standard_normal(n_seeds) if seed_effects is None else np.asarray(seed_effects)
    shared = np.vstack([ar1(rng, n, sig.shape[1], phi) for n in lens])
    pa = [prediction(rng, sig, lens, phi, 1.5 * np.exp(seed_sd * v), shared, share) for v in u]
    pb = prediction(rng, sig, lens, phi, matched_noise(1.5, seed_sd))
    return pa, pb
