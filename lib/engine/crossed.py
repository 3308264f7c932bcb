"""Δ with subjects and fine-tuned models as crossed random effects.

Every subject is scored by every fine-tuning seed's model, so a Δ table (subjects x seeds) has two
sources of variability that a claim about fine-tuning must generalise over: subjects and trained
models. Averaging seeds within each subject and testing across subjects treats the few models as
fixed: a quirk of one model is shared by every subject and never enters the error term, and the
false-positive rate grows with the number of subjects (docs/validity.md, section 5d).

The model here is the two-way random-effects ANOVA without replication,

    D[i, j] = mu + a_i + b_j + e_ij,   a ~ (0, s_a^2) subjects, b ~ (0, s_b^2) seeds,

whose grand mean has variance s_a^2 / S + s_b^2 / M + s_e^2 / (S M). The two-way mean squares
estimate it by (MS_A + MS_B) / (S M) (E[MS_A] = M s_a^2 + s_e^2, E[MS_B] = S s_b^2 + s_e^2: high by
s_e^2 / (S M), the smallest term; subtracting MS_E, the unbiased version, made the test more
anti-conservative). The test and interval are Student t with Satterthwaite's degrees of freedom,
except where the models' term is the larger (MS_B > MS_A): then the error is mostly the spread of
M models, and the df are M - 1 (Satterthwaite's df, estimated from the same mean squares, run
high exactly when MS_B is low by chance: the false-positive rates with and without the bound are
in docs/validity.md, section 5d). Closed form: no mixed-model optimiser that can fail to converge
at 3 seeds, and exact arithmetic for the balanced tables this project makes.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from .folds import EngineError


def _mean_squares(D: np.ndarray) -> tuple[float, float, float]:
    S, M = D.shape
    mu = D.mean()
    a, b = D.mean(1), D.mean(0)
    ms_a = M * ((a - mu) ** 2).sum() / (S - 1)
    ms_b = S * ((b - mu) ** 2).sum() / (M - 1)
    resid = D - a[:, None] - b[None, :] + mu
    ms_e = (resid ** 2).sum() / ((S - 1) * (M - 1))
    return float(ms_a), float(ms_b), float(ms_e)


def crossed_test(D, level: float = 0.95, power: float = 0.8) -> dict:
    """Test and CI of the grand mean of Δ over subjects x fine-tuning seeds, both random.

    Parameters
    ----------
    D : array (n_subjects, n_seeds)
        Δ per subject and seed (no missing cells).
    level : float
        Confidence level.
    power : float
        Power of the minimum detectable effect.

    Returns
    -------
    dict
        The mean Δ, its standard error, Satterthwaite df, t, two-sided p, the CI, the
        between-seed and between-subject SDs (variance components floored at 0), the per-seed
        means, and ``mde``: the smallest |Δ| this design detects with ``power`` at 1 - level.
    """
    D = np.asarray(D, float)
    if D.ndim != 2 or np.isnan(D).any():
        raise EngineError("D must be a complete subjects x seeds table")
    S, M = D.shape
    if S < 2 or M < 2:
        raise EngineError(f"need >= 2 subjects and >= 2 seeds (got {S} x {M})")
    ms_a, ms_b, ms_e = _mean_squares(D)
    num = ms_a + ms_b
    se = np.sqrt(num / (S * M))
    df = float(M - 1) if ms_b > ms_a else num ** 2 / (ms_a ** 2 / (S - 1) + ms_b ** 2 / (M - 1))
    delta = float(D.mean())
    t = delta / se if se > 0 else np.inf * np.sign(delta)
    q = stats.t.ppf(0.5 + level / 2, df)
    return dict(delta=delta, se=float(se), df=float(df), t=float(t),
                p=float(2 * stats.t.sf(abs(t), df)), ci_low=delta - q * se, ci_high=delta + q * se,
                seed_sd=float(np.sqrt(max(ms_b - ms_e, 0) / S)),
                subject_sd=float(np.sqrt(max(ms_a - ms_e, 0) / M)),
                seed_means=D.mean(0).tolist(), n_subjects=S, n_seeds=M,
                mde=float((q + stats.t.ppf(power, df)) * se))
