"""Δ over fine-tuning seeds, over subjects, and along fine-tuning checkpoints, on held-out time.

Every function here takes block contributions (:func:`lib.engine.paired.block_contributions`:
Δ = sum over blocks of c_j, on blocks of held-out TRs that every compared model shares) and
returns a plain dict of numbers. Measurements of their calibration: docs/validity.md 5g.

* :func:`seed_interval` -- one subject, M fine-tuned models (seeds): Δ averaged over seeds, with a
  standard error that has both sources of variance in it, the time-sampling variance of the
  seed-averaged contributions (:func:`lib.engine.paired.hac_se`) plus the between-seed variance
  of the per-seed Δs over M; Student t with Satterthwaite's degrees of freedom.
* :func:`fixed_effect` -- subjects combined by inverse-variance weights of their time-sampling
  variance. The seeds' models score every subject, so their variance is common to the subjects:
  it is added once, as the between-seed variance of the combined per-seed Δs over M, never
  divided among subjects. Cochran's Q and I² say how much the subjects differ. A statement about
  *these* subjects, not a population.
* :func:`trend` -- the slope of Δ over log2(tokens seen) across checkpoints, as one more linear
  combination of the same blocks' contributions (so its time variance is the same block SE).
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from .folds import EngineError
from .paired import hac_se, mde


def _t_summary(delta: float, var_time: float, df_time: float, var_seed: float, df_seed: float,
               level: float, power: float) -> dict:
    """t-test, CI and MDE of ``delta`` whose variance is var_time + var_seed, with
    Satterthwaite's degrees of freedom (var_seed NaN: the time part alone)."""
    parts = [(var_time, df_time)] + ([(var_seed, df_seed)] if np.isfinite(var_seed) else [])
    var = sum(v for v, _ in parts)
    se = float(np.sqrt(var))
    den = sum(v * v / f for v, f in parts if f > 0 and v > 0)
    df = float(var * var / den) if den > 0 else float(df_time)
    t = delta / se if se > 0 else np.inf * np.sign(delta)
    q = stats.t.ppf(0.5 + level / 2, df)
    return dict(delta=float(delta), se=se, df=df, t=float(t),
                p=float(2 * stats.t.sf(abs(t), df)), ci_low=float(delta - q * se),
                ci_high=float(delta + q * se), mde=mde(se, df, level, power))


def seed_interval(c_seeds: np.ndarray, w: np.ndarray, seg: np.ndarray, level: float = 0.95,
                  power: float = 0.8) -> dict:
    """Δ of one subject averaged over M fine-tuning seeds, with a CI that holds both the
    time-sampling and the between-seed variance.

    Variance = hac_se(mean over seeds of c - Δ w)^2 (time, df J - 1) + var(per-seed Δ) / M
    (seeds, df M - 1), Satterthwaite's df. With one seed the second term is absent
    (``se_seed`` NaN): the interval then leaves the variability between fine-tuned models out,
    and the caller says so.

    Parameters
    ----------
    c_seeds : array (M, J)
        Each seed's block contributions on the same J blocks.
    w : array (J,)
        Each block's share of the weights (sum 1).
    seg : array (J,)
        Each block's story.
    level, power : float
        Confidence level; power of the minimum detectable effect.

    Returns
    -------
    dict
        ``delta``, ``se``, ``df``, ``t``, ``p``, ``ci_low``, ``ci_high``, ``mde``, ``se_time``,
        ``se_seed``, ``n_seeds``, ``seed_deltas``.
    """
    c_seeds = np.atleast_2d(np.asarray(c_seeds, float))
    M, J = c_seeds.shape
    cbar = c_seeds.mean(0)
    delta = float(cbar.sum())
    var_time = float(hac_se(cbar - delta * np.asarray(w, float), seg) ** 2)
    per_seed = c_seeds.sum(1)
    var_seed = float(per_seed.var(ddof=1) / M) if M > 1 else float("nan")
    out = _t_summary(delta, var_time, J - 1, var_seed, M - 1, level, power)
    return dict(out, se_time=float(np.sqrt(var_time)),
                se_seed=float(np.sqrt(var_seed)) if M > 1 else float("nan"),
                n_seeds=M, n_blocks=J, seed_deltas=per_seed.tolist())


def fixed_effect(per_subject: list[dict], level: float = 0.95, power: float = 0.8) -> dict:
    """Subjects combined by inverse-variance weights; the seeds' variance added once (the models
    are shared by the subjects).

    Δ = sum_i w_i Δ_i / sum_i w_i with w_i = 1 / se_time_i^2; variance 1 / sum_i w_i + the
    between-seed variance of the combined per-seed Δs / M. Q = sum_i w_i (Δ_i - Δ)^2 on k - 1
    df and I² = max(0, (Q - (k - 1)) / Q).

    Parameters
    ----------
    per_subject : list of dict
        :func:`seed_interval` of each subject (the same M seeds in the same order).
    level, power : float
        Confidence level; power of the minimum detectable effect.

    Returns
    -------
    dict
        As :func:`seed_interval`, with ``Q``, ``Q_p`` and ``I2``.
    """
    D = np.asarray([s["seed_deltas"] for s in per_subject], float)      # (S, M)
    se_t = np.asarray([s["se_time"] for s in per_subject], float)
    if D.ndim != 2 or D.shape[0] < 2:
        raise EngineError("fixed_effect needs at least 2 subjects with the same seeds")
    S, M = D.shape
    w = 1 / se_t ** 2
    per_seed = (w[:, None] * D).sum(0) / w.sum()
    delta = float(per_seed.mean())
    var_time = float(1 / w.sum())
    var_seed = float(per_seed.var(ddof=1) / M) if M > 1 else float("nan")
    dfs = np.asarray([s.get("n_blocks", np.inf) - 1 for s in per_subject], float)
    df_time = float(w.sum() ** 2 / (w ** 2 / dfs).sum())          # Satterthwaite
    out = _t_summary(delta, var_time, df_time, var_seed, M - 1, level, power)
    Di = D.mean(1)
    Q = float((w * (Di - delta) ** 2).sum())
    return dict(out, se_time=float(np.sqrt(var_time)),
                se_seed=float(np.sqrt(var_seed)) if M > 1 else float("nan"), n_seeds=M,
                n_subjects=S, Q=Q, Q_df=S - 1, Q_p=float(stats.chi2.sf(Q, S - 1)),
                I2=float(max(0.0, (Q - (S - 1)) / Q)) if Q > 0 else 0.0,
                seed_deltas=per_seed.tolist())


def trend(c_steps: np.ndarray, tokens, w: np.ndarray, seg: np.ndarray, level: float = 0.95,
          power: float = 0.8) -> dict:
    """The slope of Δ over log2(tokens seen) across K fine-tuning checkpoints (Δr per doubling).

    The least-squares slope is sum_k a_k Δ_k with a_k = (x_k - mean x) / sum (x - mean x)^2, so
    its block contributions are sum_k a_k c_kj and its variance is taken like any Δ's
    (:func:`seed_interval`).

    Parameters
    ----------
    c_steps : array (K, J) or (K, M, J)
        Block contributions of each checkpoint (and seed) on the same blocks.
    tokens : sequence of int (K,)
        Tokens seen at each checkpoint.
    w, seg : array (J,)
        Block weights and stories.
    level, power : float
        Confidence level; power of the minimum detectable effect.

    Returns
    -------
    dict
        As :func:`seed_interval`, ``delta`` being the slope, with ``n_checkpoints``.
    """
    c = np.asarray(c_steps, float)
    if c.ndim == 2:
        c = c[:, None, :]
    x = np.log2(np.asarray(tokens, float))
    if len(x) != c.shape[0] or len(x) < 3:
        raise EngineError("trend needs one checkpoint per row of c_steps, at least 3")
    a = (x - x.mean()) / ((x - x.mean()) ** 2).sum()
    slope_c = np.tensordot(a, c, axes=1)                                # (M, J)
    out = seed_interval(slope_c, w, seg, level, power)   # centred on the slope: sum_k a_k Δ_k w
    out["slope"] = out.pop("delta")
    out["n_checkpoints"] = len(x)
    return out
