"""Stage 06 for response matrices: the answer per subject, sanity checks and figures.

Reads stage 05's tables (:mod:`lib.matrix_encoding`): ``scores.csv``, ``component_scores.csv``,
``layer_scores.csv``, ``deltas.csv``. The unit of inference is held-out time within a subject
(:mod:`lib.engine.paired`); subjects are reported side by side and never pooled into a group claim.
Every sentence is built from the tables, never written by hand.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

TABLES = ("scores", "component_scores", "layer_scores", "deltas")


def load_stage05(d: str | Path) -> dict[str, pd.DataFrame]:
    d = Path(d)
    return {k: pd.read_csv(d / f"{k}.csv") for k in TABLES}


def headline_set(scores: pd.DataFrame, wanted: str = "first10") -> str:
    """The set of targets the headline uses: ``wanted`` when the run has it, else its first."""
    names = list(dict.fromkeys(scores.targets.astype(str)))
    if not names:
        raise ValueError("no scores in this run")
    return wanted if wanted in names else names[0]


def _fmt_p(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else "< 1e-4"


def answer(deltas: pd.DataFrame, contrast: str = "sft - raw", targets: str = "first10",
           n_seeds: int = 1, source: str = "", unit: str = "targets") -> str:
    """One sentence per subject: Δ, its CI and p, for ``contrast`` on ``targets`` (``unit``
    names what a target is, e.g. "response components")."""
    d = deltas[(deltas.contrast == contrast) & (deltas.targets == targets)]
    if d.empty:
        return f"No {contrast} comparison in this run."
    n = int(d.n_targets.iloc[0])
    what = f"all {n} {unit}" if targets == "all" else f"the first {n} {unit} ({targets})"
    parts = []
    for r in d.groupby("subject", sort=True).agg(
            delta=("delta", "mean"), ci_low=("ci_low", "mean"), ci_high=("ci_high", "mean"),
            p=("p", "max"), n_trs=("n_trs", "first"), block=("block_trs", "first")).itertuples():
        parts.append(f"{r.Index}: Δr = {r.delta:+.4f} (95% CI {r.ci_low:+.4f} to {r.ci_high:+.4f}, "
                     f"p = {_fmt_p(r.p)}; {r.n_trs} held-out TRs in blocks of {r.block})")
    seeds = ("one fine-tuning seed: the variability between fine-tuned models is not in these "
             "intervals" if n_seeds == 1 else f"{n_seeds} seeds, Δ averaged over them")
    return (f"{source}{contrast}, mean r over {what} -- " + "; ".join(parts)
            + f". Held-out time is the unit within each subject; no group claim ({seeds}).")


def sanity(scores: pd.DataFrame, lm: str = "raw", targets: str = "first10",
           baselines=("word_rate", "random")) -> pd.DataFrame:
    """Per subject: is the LM's score above its chance score and above each baseline?"""
    s = scores[scores.targets == targets]
    rows = []
    for sub, g in s.groupby("subject"):
        g = g.groupby("condition")[["brain_score", "chance_score"]].mean()
        if lm not in g.index:
            continue
        r = g.loc[lm]
        rows.append(dict(subject=sub, check=f"{lm} above its chance score",
                         lm=r.brain_score, other=r.chance_score,
                         passed=bool(r.brain_score > r.chance_score)))
        for b in baselines:
            if b in g.index:
                rows.append(dict(subject=sub, check=f"{lm} above {b}", lm=r.brain_score,
                                 other=g.loc[b, "brain_score"],
                                 passed=bool(r.brain_score > g.loc[b, "brain_score"])))
    return pd.DataFrame(rows, columns=["subject", "check", "lm", "other", "passed"])


def sanity_text(checks: pd.DataFrame) -> str:
    if checks.empty:
        return "No sanity check could be made (no raw LM scores)."
    failed = checks[~checks.passed]
    if failed.empty:
        return "Sanity: every check passed (" + "; ".join(
            f"{r.subject} {r.check}: {r.lm:.4f} vs {r.other:.4f}" for r in checks.itertuples()) + ")."
    return ("**Sanity check FAILED** -- a finding about the pipeline or the data, not to be "
            "ignored: " + "; ".join(f"{r.subject}: {r.check} is false ({r.lm:.4f} vs "
                                    f"{r.other:.4f})" for r in failed.itertuples()) + ".")


def _tag(synthetic: bool) -> str:
    return " [synthetic responses]" if synthetic else ""


def component_profile(comp: pd.DataFrame, conditions=("raw", "sft"), first: int = 40,
                      synthetic: bool = False):
    """r of each target (the first ``first`` components) for each subject and condition, with
    the chance level of the first condition."""
    subs = sorted(comp.subject.unique())
    fig, axes = plt.subplots(1, len(subs), figsize=(5 * len(subs), 3.2), squeeze=False,
                             sharey=True)
    for ax, sub in zip(axes[0], subs):
        c = comp[(comp.subject == sub) & (comp.target < first)]
        for i, cond in enumerate(conditions):
            g = c[c.condition == cond].groupby("target")[["brain_score", "chance_score"]].mean()
            if g.empty:
                continue
            ax.plot(g.index, g.brain_score, "o-", ms=3, color=f"C{i}", label=cond)
            if i == 0:
                ax.plot(g.index, g.chance_score, ":", color="0.5", label=f"{cond} chance")
        ax.axhline(0, color="0.8", lw=0.8)
        ax.set(title=f"{sub}{_tag(synthetic)}", xlabel="response component (0 = most variance)",
               ylabel="held-out r")
        ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig


def delta_plot(deltas: pd.DataFrame, targets: str = "first10", synthetic: bool = False):
    """Δ with its CI for every contrast and subject (subjects side by side)."""
    d = deltas[deltas.targets == targets].groupby(["contrast", "subject"], sort=False).agg(
        delta=("delta", "mean"), lo=("ci_low", "mean"), hi=("ci_high", "mean")).reset_index()
    contrasts = list(dict.fromkeys(d.contrast))
    subs = sorted(d.subject.unique())
    fig, ax = plt.subplots(figsize=(1.6 * len(contrasts) + 2, 3.2))
    for j, sub in enumerate(subs):
        g = d[d.subject == sub].set_index("contrast").reindex(contrasts)
        x = np.arange(len(contrasts)) + (j - (len(subs) - 1) / 2) * 0.2
        ax.errorbar(x, g.delta, yerr=[g.delta - g.lo, g.hi - g.delta], fmt="o", capsize=3,
                    label=sub)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xticks(range(len(contrasts)), contrasts, rotation=20)
    ax.set(ylabel=f"Δ mean r ({targets})", title=f"Δ per subject, 95% CI{_tag(synthetic)}")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def score_bars(scores: pd.DataFrame, targets: str = "first10", synthetic: bool = False):
    """Brain score of every condition per subject, with each condition's chance score."""
    s = scores[scores.targets == targets].groupby(["condition", "subject"])[
        ["brain_score", "chance_score"]].mean().reset_index()
    conds = list(s.groupby("condition").brain_score.mean().sort_values().index)
    subs = sorted(s.subject.unique())
    fig, ax = plt.subplots(figsize=(1.1 * len(conds) + 2, 3.2))
    w = 0.8 / len(subs)
    for j, sub in enumerate(subs):
        g = s[s.subject == sub].set_index("condition").reindex(conds)
        x = np.arange(len(conds)) + (j - (len(subs) - 1) / 2) * w
        ax.bar(x, g.brain_score, w, label=sub, color=f"C{j}")
        ax.plot(x, g.chance_score, "k_", ms=10, label="chance" if j == 0 else None)
    ax.set_xticks(range(len(conds)), conds, rotation=20)
    ax.set(ylabel=f"mean held-out r ({targets})", title=f"Brain scores{_tag(synthetic)}")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def layer_plot(layers: pd.DataFrame, targets: str = "first10", synthetic: bool = False):
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for (cond, sub), g in layers[layers.targets == targets].groupby(["condition", "subject"]):
        g = g.groupby("layer").brain_score.mean()
        ax.plot(g.index, g.values, "o-", ms=3, label=f"{cond} {sub}")
    ax.set(xlabel="layer (0 = embeddings)", ylabel=f"mean held-out r ({targets})",
           title=f"Layer profile{_tag(synthetic)}")
    ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig
