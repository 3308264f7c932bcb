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

from .plots import synthetic_tag

TABLES = ("scores", "component_scores", "layer_scores", "deltas")
#: written by the seed-, subject- and checkpoint-aware analysis (lib.deltas); absent in older runs
OPTIONAL = ("answer", "dose", "trend", "layer_deltas")
FINE_TUNING = ("sft - raw", "sft - control", "sft - scrambled")


def load_tables(d: str | Path) -> dict[str, pd.DataFrame]:
    """Stage 05's tables of a response-matrix run (the optional ones where written)."""
    d = Path(d)
    out = {k: pd.read_csv(d / f"{k}.csv") for k in TABLES}
    for k in OPTIONAL:
        f = d / f"{k}.csv"
        if f.exists() and f.stat().st_size > 1:
            out[k] = pd.read_csv(f)
    return out


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
    """One sentence per subject and seed from ``deltas.csv``: Δ, its CI and p, for ``contrast``
    on ``targets`` (``unit`` names what a target is, e.g. "response components"). Several seeds
    are listed one by one: averaging their CI ends is no interval for the seed mean, and a
    seeds-combined interval with the seeds' variance in it is :func:`answer_text`'s."""
    d = deltas[(deltas.contrast == contrast) & (deltas.targets == targets)]
    if d.empty:
        return f"No {contrast} comparison in this run."
    n = int(d.n_targets.iloc[0])
    what = f"all {n} {unit}" if targets == "all" else f"the first {n} {unit} ({targets})"
    parts = []
    for r in d.sort_values(["subject", "seed"]).itertuples():
        seed = f" seed {r.seed}" if d.seed.nunique() > 1 else ""
        parts.append(f"{r.subject}{seed}: Δr = {r.delta:+.4f} ({_ci(r)}, p = {_fmt_p(r.p)}; "
                     f"{r.n_trs} held-out TRs)")
    seeds = ("one fine-tuning seed: the variability between fine-tuned models is not in these "
             "intervals" if n_seeds == 1 else f"{n_seeds} seeds shown one by one; the "
             f"seeds-combined interval is in the answer table")
    return (f"{source}{contrast}, mean r over {what} -- " + "; ".join(parts)
            + f". Held-out time is the unit within each subject; no group claim ({seeds}).")


def _ci(r) -> str:
    return f"95% CI {r.ci_low:+.4f} to {r.ci_high:+.4f}"


def answer_text(answer: pd.DataFrame, contrast: str = "sft - raw", targets: str = "all",
                unit: str = "response components", source: str = "") -> str:
    """The answer from ``answer.csv`` (:mod:`lib.deltas`): per subject and combined, Δ averaged
    over the seeds with a CI that holds the seeds' variance, p, and the minimum detectable effect
    (80% power); where p >= .05, "no change larger than the MDE" is what the data can say."""
    a = answer[(answer.contrast == contrast) & (answer.targets == targets)]
    if a.empty:
        return f"No {contrast} comparison in this run."
    n = int(a.n_targets.iloc[0])
    what = f"all {n} {unit}" if targets == "all" else f"the first {n} {unit} ({targets})"
    seeds = int(a.n_seeds.iloc[0])
    parts = []
    for r in a.itertuples():
        who = ("subjects combined (fixed effect; these subjects, not a population"
               + (f"; I² = {r.I2:.0%}" if pd.notna(r.I2) else "") + ")"
               if r.subject == "combined" else r.subject)
        verdict = (f"detectable: {'a gain' if r.delta > 0 else 'a loss'}" if r.p < 0.05 else
                   f"no change larger than ±{r.mde:.4f} is likely to be missed")
        parts.append(f"{who}: Δr = {r.delta:+.4f} ({_ci(r)}, p = {_fmt_p(r.p)}; "
                     f"MDE {r.mde:.4f}; {verdict})")
    var = (f"the CIs hold the variance between {seeds} fine-tuning seeds as well as held-out time"
           if seeds > 1 else "one fine-tuning seed: the variability between fine-tuned models "
           "is not in these intervals")
    return (f"{source}{contrast}, mean r over {what} -- " + "; ".join(parts)
            + f". Held-out time is the unit within each subject; {var}.")


def agreement(quick: pd.DataFrame, powered: pd.DataFrame, contrast: str = "sft - raw",
              targets: str = "all") -> pd.DataFrame:
    """Does the quick run (``deltas.csv`` of ``make report``'s profile) agree with the committed
    powered answer (``answer.csv``)? Per subject: the quick Δ and its CI, the powered Δ, and
    whether the powered Δ lies inside the quick CI (the quick run's own interval)."""
    q = quick[(quick.contrast == contrast) & (quick.targets == targets)]
    q = q.groupby("subject").agg(quick_delta=("delta", "mean"), quick_ci_low=("ci_low", "min"),
                                 quick_ci_high=("ci_high", "max"))
    p = powered[(powered.contrast == contrast) & (powered.targets == targets)
                ].set_index("subject")[["delta", "ci_low", "ci_high"]].add_prefix("powered_")
    out = q.join(p, how="inner").reset_index()
    out["within_quick_ci"] = out.powered_delta.between(out.quick_ci_low, out.quick_ci_high)
    return out


def component_outcomes(comp: pd.DataFrame, a: str = "sft", b: str = "raw") -> pd.DataFrame:
    """The original study's outputs per subject: Δ of every response component (a - b, seeds
    averaged), how many improved, the mean gain and its spread."""
    g = comp[comp.condition.isin([a, b])].groupby(["subject", "condition", "target"]
                                                   ).brain_score.mean().unstack("condition")
    d = (g[a] - g[b]).rename("delta").reset_index()
    return d.groupby("subject").delta.agg(
        n_targets="size", n_improved=lambda v: int((v > 0).sum()), mean_gain="mean",
        median_gain="median", sd="std").reset_index()


def component_delta_plot(comp: pd.DataFrame, a: str = "sft", b: str = "raw",
                         synthetic: bool = False):
    """Histogram over response components of Δ(a - b) (seeds averaged), per subject."""
    g = comp[comp.condition.isin([a, b])].groupby(["subject", "condition", "target"]
                                                   ).brain_score.mean().unstack("condition")
    d = (g[a] - g[b]).rename("delta").reset_index()
    subs = sorted(d.subject.unique())
    fig, axes = plt.subplots(1, len(subs), figsize=(4.2 * len(subs), 3), squeeze=False,
                             sharey=True)
    for ax, sub in zip(axes[0], subs):
        v = d[d.subject == sub].delta
        ax.hist(v, bins=30, color="C0", alpha=0.8)
        ax.axvline(0, color="k", lw=0.8)
        ax.axvline(v.mean(), color="C3", lw=1.2, label=f"mean {v.mean():+.4f}")
        ax.set(title=f"{sub}: {int((v > 0).sum())} of {len(v)} improved"
                     f"{synthetic_tag(synthetic, 'responses')}",
               xlabel=f"Δr per component ({a} − {b})", ylabel="components")
        ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig


def answer_plot(answer: pd.DataFrame, targets: str = "all", synthetic: bool = False):
    """Δ with its CI per subject and combined: the fine-tuning contrasts on their own scale
    (left), the sanity contrasts, about 100x larger, on theirs (right)."""
    a = answer[answer.targets == targets]
    groups = [[c for c in FINE_TUNING if c in set(a.contrast)],
              [c for c in dict.fromkeys(a.contrast) if c not in FINE_TUNING]]
    groups = [g for g in groups if g]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 3.4), squeeze=False,
                             gridspec_kw=dict(width_ratios=[max(len(g), 1) for g in groups]))
    whos = list(dict.fromkeys(sorted(set(a.subject) - {"combined"}) + ["combined"]))
    for ax, cons in zip(axes[0], groups):
        for j, who in enumerate(w for w in whos if w in set(a.subject)):
            g = a[a.subject == who].set_index("contrast").reindex(cons)
            x = np.arange(len(cons)) + (j - (len(whos) - 1) / 2) * 0.18
            ax.errorbar(x, g.delta, yerr=[g.delta - g.ci_low, g.ci_high - g.delta], fmt="o",
                        capsize=3, color="k" if who == "combined" else f"C{j}",
                        mfc="w" if who == "combined" else None, label=who)
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xticks(range(len(cons)), cons, rotation=15)
        ax.set(ylabel=f"Δ mean r ({targets})")
        ax.legend(frameon=False, fontsize=7)
    axes[0][0].set_title(f"Fine-tuning contrasts, 95% CI with seed variance"
                         f"{synthetic_tag(synthetic, 'responses')}",
                         fontsize=9)
    if len(groups) > 1:
        axes[0][1].set_title("Sanity contrasts (their own scale)", fontsize=9)
    fig.tight_layout()
    return fig


def dose_frame(dose: pd.DataFrame, perplexity: pd.DataFrame | None = None) -> pd.DataFrame:
    """The dose-response table with the held-out perplexity of each checkpoint's model (and the
    change from the raw model's) where ``perplexity`` (stage 04's table) has it."""
    d = dose.copy()
    if perplexity is not None and {"seed", "step"} <= set(perplexity.columns):
        raw = float(perplexity.loc[perplexity.model == "raw", "perplexity"].iloc[0])
        ppl = perplexity.rename(columns={"model": "condition"})[["condition", "seed",
                                                                 "perplexity"]]
        d = d.merge(ppl, on=["condition", "seed"], how="left")
        d["d_perplexity"] = d.perplexity - raw
    return d


def dose_plot(dose: pd.DataFrame, targets: str = "all", synthetic: bool = False):
    """Δ against tokens seen (log scale; 0 tokens = the raw model, Δ = 0) for each kind against
    raw, per subject, with block CIs; and Δ against the change in held-out perplexity."""
    d = dose[(dose.targets == targets) & dose.contrast.str.endswith("- raw")]
    has_ppl = "d_perplexity" in d and d.d_perplexity.notna().any()
    fig, axes = plt.subplots(1, 2 if has_ppl else 1, figsize=(11 if has_ppl else 5.5, 3.4),
                             squeeze=False)
    ls = {s: m for s, m in zip(sorted(d.subject.unique()), ("-", "--", ":", "-."))}
    for i, (fam, g) in enumerate(d.groupby("contrast", sort=False)):
        for sub, h in g.groupby("subject"):
            h = h.sort_values("tokens")
            axes[0][0].errorbar(h.tokens, h.delta, yerr=[h.delta - h.ci_low, h.ci_high - h.delta],
                                fmt="o" + ls[sub], ms=3, capsize=2, color=f"C{i}",
                                label=f"{fam} {sub}")
            if has_ppl:
                axes[0][1].plot(h.d_perplexity, h.delta, "o" + ls[sub], ms=3, color=f"C{i}")
    axes[0][0].set_xscale("log")
    axes[0][0].axhline(0, color="0.5", lw=0.8)
    axes[0][0].set(xlabel="tokens seen in fine-tuning (log)", ylabel=f"Δ mean r ({targets})",
                   title=f"Dose-response over checkpoints{synthetic_tag(synthetic, 'responses')}")
    axes[0][0].legend(frameon=False, fontsize=6, ncol=2)
    if has_ppl:
        axes[0][1].axhline(0, color="0.5", lw=0.8)
        axes[0][1].set(xlabel="change in held-out perplexity (checkpoint − raw)",
                       ylabel=f"Δ mean r ({targets})", title="Δ against perplexity change")
    fig.tight_layout()
    return fig


def layer_delta_plot(layer_deltas: pd.DataFrame, targets: str = "all", synthetic: bool = False):
    """Δ(sft - raw) with its block CI at every layer of the profile, per subject."""
    d = layer_deltas[layer_deltas.targets == targets]
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for j, (sub, g) in enumerate(d.groupby("subject")):
        g = g.sort_values("layer")
        ax.errorbar(g.layer + 0.15 * j, g.delta, yerr=[g.delta - g.ci_low, g.ci_high - g.delta],
                    fmt="o-", ms=3, capsize=2, label=sub)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set(xlabel="layer (0 = embeddings)", ylabel=f"Δ mean r ({targets})",
           title=f"Δ (sft − raw) by layer{synthetic_tag(synthetic, 'responses')}")
    ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig


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
        ax.set(title=f"{sub}{synthetic_tag(synthetic, 'responses')}", xlabel="response component (0 = most variance)",
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
    ax.set(ylabel=f"Δ mean r ({targets})", title=f"Δ per subject, 95% CI{synthetic_tag(synthetic, 'responses')}")
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
    ax.set(ylabel=f"mean held-out r ({targets})", title=f"Brain scores{synthetic_tag(synthetic, 'responses')}")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def layer_plot(layers: pd.DataFrame, targets: str = "first10", synthetic: bool = False):
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for (cond, sub), g in layers[layers.targets == targets].groupby(["condition", "subject"]):
        g = g.groupby("layer").brain_score.mean()
        ax.plot(g.index, g.values, "o-", ms=3, label=f"{cond} {sub}")
    ax.set(xlabel="layer (0 = embeddings)", ylabel=f"mean held-out r ({targets})",
           title=f"Layer profile{synthetic_tag(synthetic, 'responses')}")
    ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig
