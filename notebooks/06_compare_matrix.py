# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Does fine-tuning change brain scores? (response matrices, per subject)
#
# With few subjects the subject cannot be the unit of inference. Within each subject, the unit is
# **held-out time**: Δ = score(SFT) − score(raw) on the same test TRs and targets, a 95% CI from
# the block-exchange test inverted, and a two-sided permutation p that exchanges the two models'
# predictions in blocks of TRs as long as a few autocorrelation times of the data (measured).
# Subjects are shown side by side; there is no group claim.

# %% tags=["parameters"]
run_dir = "results/lebel"
headline_targets = "first10"

# %%
from pathlib import Path

from IPython.display import Markdown, display

from lib import matrix_compare as mc, plots
from lib.cache import write_csv

run = Path(run_dir)
out = run / "compare"
st = mc.load_stage05(run / "brain_score")
synthetic = bool(st["scores"].synthetic_bold.astype(str).str.lower().eq("true").any())
headline_targets = mc.headline_set(st["scores"], headline_targets)
n_seeds = st["deltas"].loc[st["deltas"].contrast == "sft - raw", "seed"].nunique()
if "answer" in st:      # seeds averaged with their variance in the CI, subjects combined, MDE
    display(Markdown("**" + mc.answer_text(st["answer"], "sft - raw", headline_targets) + "**"))
else:
    display(Markdown("**" + mc.answer(st["deltas"], "sft - raw", headline_targets, n_seeds)
                     + "**"))
checks = mc.sanity(st["scores"], "raw", headline_targets)
write_csv(out / "sanity.csv", checks)
display(Markdown(mc.sanity_text(checks)))
st["deltas"][["subject", "contrast", "seed", "targets", "delta", "ci_low", "ci_high", "p",
              "block_trs", "n_blocks"]].round(5)

# %% [markdown]
# ## The answer table: every contrast, per subject and combined, with the minimum detectable effect
# `se_time` is the held-out-time part of the standard error, `se_seed` the seeds' part; `mde` is the
# smallest |Δ| the design detects with 80% power (two-sided 5%). The fine-tuning contrasts are drawn
# on their own scale, apart from the sanity contrasts that are about 100x larger.

# %% tags=["report"]
if "answer" in st:
    write_csv(out / "answer.csv", st["answer"])
    fig = mc.answer_plot(st["answer"], headline_targets, synthetic)
    plots.save(fig, out / "answer.png")
    display(st["answer"][["contrast", "targets", "subject", "delta", "ci_low", "ci_high", "p",
                          "mde", "se_time", "se_seed", "n_seeds", "I2"]].round(5))

# %% [markdown]
# ## The original study's outputs: Δ over the response components, how many improved, mean gain

# %% tags=["report"]
outcomes = mc.component_outcomes(st["component_scores"])
write_csv(out / "component_outcomes.csv", outcomes)
fig = mc.component_delta_plot(st["component_scores"], synthetic=synthetic)
plots.save(fig, out / "component_deltas.png")
outcomes.round(5)

# %% [markdown]
# ## Dose-response: Δ as fine-tuning proceeds (checkpoints), with held-out perplexity

# %% tags=["report"]
import pandas as pd

if "dose" in st:
    ppl_csv = run / "sft" / "perplexity.csv"
    dose = mc.dose_frame(st["dose"], pd.read_csv(ppl_csv) if ppl_csv.exists() else None)
    write_csv(out / "dose.csv", dose)
    fig = mc.dose_plot(dose, headline_targets, synthetic)
    plots.save(fig, out / "dose.png")
    display(st.get("trend", pd.DataFrame()).round(5))
else:
    print("no fine-tuning checkpoints in this run")

# %% [markdown]
# ## Δ (sft − raw) by layer

# %% tags=["report"]
if "layer_deltas" in st:
    fig = mc.layer_delta_plot(st["layer_deltas"], headline_targets, synthetic)
    plots.save(fig, out / "layer_deltas.png")
else:
    print("no layer profile of a fine-tuned model in this run")

# %% [markdown]
# ## Δ per subject for every contrast

# %% tags=["report"]
fig = mc.delta_plot(st["deltas"], headline_targets, synthetic)
plots.save(fig, out / "deltas.png")

# %% [markdown]
# ## Brain scores of every model and baseline, with chance levels

# %% tags=["report"]
fig = mc.score_bars(st["scores"], headline_targets, synthetic)
plots.save(fig, out / "scores.png")

# %% [markdown]
# ## Per-component profile of r (raw and fine-tuned)

# %% tags=["report"]
fig = mc.component_profile(st["component_scores"], ("raw", "sft"), synthetic=synthetic)
plots.save(fig, out / "components.png")

# %% [markdown]
# ## Layer profile

# %% tags=["report"]
if len(st["layer_scores"]):
    fig = mc.layer_plot(st["layer_scores"], headline_targets, synthetic)
    plots.save(fig, out / "layers.png")
else:
    print("no layer profile in this run")
