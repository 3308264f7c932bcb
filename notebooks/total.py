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
# # Does fine-tuning a language model on story text change its brain score?
#
# Master report of `make report`. Question: does supervised fine-tuning (SFT) of a language model
# on story text change how well its layer-8 activations predict fMRI responses to spoken stories?
# **Part 1 answers it on real fMRI** that ships with the project (LeBel et al. 2023). **Part 2** is
# the Narratives pipeline check on the embedded default, whose BOLD is synthetic. The stage
# notebooks (linked at the end of each part) hold every detail.

# %% tags=["parameters"]
run_dir = "results/mini"
real_run_dir = "results/lebel"
powered_run_dir = "results/lebel-full"   # committed results of the powered design

# %%
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from lib import compare, matrix_compare as mc, plots, report

pd.set_option("display.max_colwidth", 200)
figure = report.figure
real, powered = Path(real_run_dir), Path(powered_run_dir)
has_real = (real / "brain_score" / "deltas.csv").exists()
has_powered = (powered / "brain_score" / "answer.csv").exists()
if has_powered:
    pst = mc.load_tables(powered / "brain_score")
    pparams = report.load_params(powered)
    pmodels = pd.read_csv(powered / "sft" / "models.csv")
    display(Markdown(report.real_data_sentence(powered, pparams)))
    display(Markdown(report.provenance_sentence(powered)))
elif has_real:
    display(Markdown(f"> No committed powered results at `{powered_run_dir}`: Part 1 shows the "
                     f"quick run only."))
if has_real:
    rst = mc.load_tables(real / "brain_score")
    rparams = report.load_params(real)
    rmodels = pd.read_csv(real / "sft" / "models.csv")
else:
    display(Markdown(f"> No real-data run at `{real_run_dir}` (run `make report`)."))

# %% [markdown]
# ## Part 1 · The answer on real fMRI
#
# The headline summary (fixed in the profile before the powered results were seen, with its
# reason): the mean r over **all 200** response components. Δ is averaged over the fine-tuning
# seeds; its 95% CI holds both held-out time and the variance between seeds; `MDE` is the smallest
# |Δ| this design detects with 80% power (two-sided 5%), so "no change" reads "no change larger than
# the MDE". The combined row pools these two subjects (inverse-variance weights of their time
# variance, the shared seeds' variance added once): a statement about these subjects, not a
# population.

# %%
if has_powered:
    head = pparams.get("headline_targets", "all")
    unit = "response components"
    for targets in [head] + [t for t in ("all", "first10") if t != head]:
        display(Markdown(("**" if targets == head else "Secondary: ")
                         + mc.answer_text(pst["answer"], "sft - raw", targets, unit)
                         + ("**" if targets == head else "")))
    figure(powered / "compare" / "answer.png", "Δ of every contrast with its 95% CI (seeds' "
           "variance included), per subject and combined (open circle). Left: the fine-tuning "
           "contrasts on their own scale; right: the sanity contrasts, about 100x larger.")
    display(pst["answer"][["contrast", "targets", "subject", "delta", "ci_low", "ci_high", "p",
                           "mde", "se_time", "se_seed", "n_seeds", "seed_deltas", "I2"]].round(5))

# %% [markdown]
# ### Dose-response: does Δ move as fine-tuning proceeds?
# Checkpoints of the same fine-tuning runs (seed 0) from 1/8 to 2 epochs, each against the raw
# model (0 tokens), with its block CI, and against the held-out perplexity of the same checkpoint.
# The trend is the least-squares slope of Δ over log2(tokens seen), tested on the same held-out
# time (one seed's trajectory: the seeds' variance is measured at the headline checkpoint only).

# %%
if has_powered and "dose" in pst:
    figure(powered / "compare" / "dose.png", "Δ (each kind − raw) against tokens seen, per "
           "subject (line style), with 95% CIs; right: against the change in held-out "
           "perplexity.")
    dose = pd.read_csv(powered / "compare" / "dose.csv")
    display(dose[dose.targets == head].pivot_table(
        index=["contrast", "step", "tokens"], columns="subject", values="delta").round(5))
    display(pst["trend"][pst["trend"].targets == head].round(5))

# %% [markdown]
# ### Δ by layer, and the original study's outputs per response component

# %%
if has_powered:
    if "layer_deltas" in pst:
        figure(powered / "compare" / "layer_deltas.png", "Δ (sft − raw, seed 0) at every third "
               "layer with its block CI, per subject.")
    figure(powered / "compare" / "component_deltas.png", "Distribution over the 200 response "
           "components of Δr (sft − raw, seeds averaged), per subject: how many improved and the "
           "mean gain (the original study's outputs).")
    display(pd.read_csv(powered / "compare" / "component_outcomes.csv").round(5))
    display(Markdown(report.sft_sentence(pmodels, powered / "sft" / "perplexity.csv")))
    ppl = pd.read_csv(powered / "sft" / "perplexity.csv")
    display(ppl.pivot_table(index=["step", "train_tokens_seen"], columns="model",
                            values="perplexity", aggfunc="mean").round(2)
            if "step" in ppl else ppl)

# %% [markdown]
# ### The quick run of `make report` against the committed answer
# `make report` recomputes the embedded quick profile (`params/lebel.yaml`: 12 training stories,
# the 3 test stories held out, one seed, 0.54 epochs). It estimates the same contrast on less data,
# so it should contain the powered estimate within its own interval.

# %%
if has_real:
    n_seeds = rmodels.loc[rmodels.condition == "sft", "seed"].nunique()
    source = (f"Quick run (LeBel et al. 2023, {rst['scores'].subject.nunique()} subjects, "
              f"{len(str(rst['scores'].test_stories.iloc[0]).split(','))} held-out stories): ")
    for targets in ("all", "first10"):
        display(Markdown(mc.answer(rst["deltas"], "sft - raw", targets, n_seeds, source,
                                   "response components")))
    if has_powered:
        agree = mc.agreement(rst["deltas"], pst["answer"], "sft - raw", head)
        display(agree.round(5))
        display(Markdown(
            f"The committed powered Δ lies inside the quick run's 95% CI for "
            f"{int(agree.within_quick_ci.sum())} of {len(agree)} subjects."))
    display(Markdown(mc.sanity_text(mc.sanity(rst["scores"], "raw", "first10"))))
    display(Markdown(report.sft_sentence(rmodels, real / "sft" / "perplexity.csv")))
    figure(real / "compare" / "deltas.png", "Quick run: Δ mean held-out r (first 10 response "
           "components) of each contrast, per subject, with its 95% CI (inverted block-exchange "
           "test over held-out time).")

# %% [markdown]
# ### Every contrast of the quick run, per subject
# Δ = score(A) − score(B) on the same held-out TRs; CI and two-sided p from exchanging the two
# models' predictions in blocks of TRs (block length from the measured autocorrelation). `first10`:
# mean r over the first 10 response components (most variance), `all`: over all 200, each
# component weighted equally.

# %%
if has_real:
    cols = ["subject", "contrast", "seed", "targets", "score_a", "score_b", "delta", "ci_low",
            "ci_high", "p", "mde", "exchange_unit", "n_blocks"]
    display(rst["deltas"][[c for c in cols if c in rst["deltas"]]].round(4))

# %% [markdown]
# ### Brain scores, baselines and chance levels

# %%
if has_powered:
    figure(powered / "compare" / "scores.png", "Mean held-out r over the headline components of "
           "every model and feature space, per subject (every story held out once); black ticks: "
           "the chance score (the same features shifted in time by half of each story).")
if has_real:
    display(rst["scores"].pivot_table(index=["targets", "condition"], columns="subject",
                                      values=["brain_score", "chance_score"]).round(4))
    figure(real / "compare" / "components.png", "Held-out r of each of the first 40 response "
           "components, raw and fine-tuned model, per subject; dotted: the raw model's chance.")
    figure(real / "compare" / "layers.png", "Layer profile: mean held-out r over the first 10 "
           "components for every layer (0 = embeddings).")

# %%
for r_dir in (powered, real):
    if (r_dir / "notebooks").exists():
        display(Markdown(f"Stage notebooks of `{r_dir}`: " + ", ".join(
            f"[{p.stem}]({p.as_posix()})" for p in sorted((r_dir / "notebooks").glob("*.ipynb")))))

# %% [markdown]
# ## Part 2 · Narratives pipeline check (embedded default)

# %%
run = Path(run_dir)
cmp = run / "compare"
params = report.load_params(run)
header = report.run_header(run, params)
synthetic = header.loc["data", "value"].startswith("SYNTHETIC")
tag = " [synthetic BOLD]" if synthetic else ""
fdr_q = params.get("fdr_q", 0.05)

if synthetic:
    display(Markdown("> **SYNTHETIC BOLD.** The fMRI data in this part are generated (real pieman "
                     "stimuli, planted signal in superior temporal voxels). The numbers test the "
                     "pipeline, not the brain."))
header

# %% [markdown]
# ### The answer on the embedded Narratives run

# %%
stats = pd.read_csv(cmp / "stats.csv")
display(Markdown(f"**{compare.headline(stats, synthetic=synthetic)}**"))
figure(cmp / "paired_whole_brain_mean.png", "Brain score of the raw and the fine-tuned model for "
       "each subject (grey) and their mean (red): whole-brain-mean BOLD target.")
figure(cmp / "delta_distribution.png", "Distribution over voxels of Δ brain score (SFT − raw) "
       "per subject; filled: the ISC-reliable voxels (the story's response is reliable across "
       "subjects; a selection that uses neither model's map).")

# %% [markdown]
# ### Δ brain score across subjects
# Contrasts: `sft − raw` (the question), `control − raw` and `scrambled − raw` (same budget on
# word-shuffled / utterance-scrambled text), `sft − control` and `sft − scrambled` (what narrative
# language adds beyond any extra training), and sanity checks `raw − random` and `raw − word_rate`.
# The subject is the unit. Targets: `whole_brain_mean` (the mean BOLD over the mask per TR),
# `voxels_mean` (mean voxel score over the mask), `voxels_reliable` (voxels with a reliable group
# ISC) and `voxels_top10pct` (top voxels by the other subjects' noise ceiling), `roi-N` (mean BOLD
# of label N; in narratives-mini label 1 is the planted superior-temporal mask) and
# `planted_roi_voxels` (synthetic data only).

# %%
dt = pd.read_csv(cmp / "delta_table.csv")
dt[dt.measure == "brain_score"]

# %% [markdown]
# The same contrasts above the chance level and normalised by the noise ceiling:

# %%
dt[dt.measure != "brain_score"].dropna(subset=["mean_delta"])

# %% [markdown]
# ### Named language ROIs
# Harvard-Oxford regions of the language network, left and right, resampled to the BOLD grid:
# each model's brain score with the mean BOLD of the ROI as the target, and Δ (SFT − raw) tested
# across subjects with Benjamini-Hochberg q across the ROIs.

# %%
if (cmp / "roi_table.csv").exists():
    display(pd.read_csv(cmp / "roi_table.csv"))
    figure(cmp / "roi_scores.png", "Brain score per named ROI: bars, mean over subjects; dots, "
           "subjects." + (" Synthetic BOLD: the planted signal sits in superior temporal voxels."
                          if synthetic else ""))
else:
    print("no named ROI in this run")

# %% [markdown]
# ### Brain maps
# Group-mean brain score (mean over subjects of each subject's map) of the raw and the fine-tuned
# model in the voxels that survive the group block-permutation test (BH-FDR), and Δ (SFT − raw)
# in the ISC-reliable voxels (selected by neither model). One colour scale for both models.

# %%
imgs = {k: nib.load(str(cmp / f"group_{k}.nii.gz")) for k in ("raw", "sft", "delta")
        if (cmp / f"group_{k}.nii.gz").exists()}
vmax = max([float(np.abs(imgs[k].get_fdata()).max()) for k in ("raw", "sft") if k in imgs] + [1e-3])
for k, img in imgs.items():
    title = (f"{k}: group brain score, FDR q<{fdr_q}{tag}" if k != "delta"
             else f"Δ sft − raw (ISC-reliable voxels){tag}")
    plots.glass_brain(img, title, vmax=vmax if k != "delta" else None)
    display(Markdown(f"*Glass brain, Pearson r, voxels with q < {fdr_q}; zero elsewhere.*"
                     if k != "delta" else "*Glass brain, Δr in the ISC-reliable voxels; zero "
                     "elsewhere.*"))
if "raw" in imgs:
    plots.surface(imgs["raw"], f"raw model, fsaverage5{tag}", vmax=vmax)
    display(Markdown(f"*The raw model's thresholded map (q < {fdr_q}) projected on the "
                     f"fsaverage5 inflated surface, lateral views.*"))
display(Markdown("Interactive viewers (open offline in a browser): " + ", ".join(
    f"[{p.name}]({p.as_posix()})" for p in sorted(cmp.glob("view_*.html")))))

# %% [markdown]
# ### Feature spaces and variance partitioning
# Each space's brain score alone (with its chance level), and the banded-ridge partition: what
# the fine-tuned model explains that the raw model and the low-level spaces do not
# (`unique lm:sft`), and the reverse (`unique lm:raw`); `vs placebo lm:sft` is the tested share,
# against the joint fits with sft's residual beyond the other spaces shifted in time. The measure
# is r|r|, the signed square of the held-out r.

# %%
if (cmp / "space_scores.csv").exists():
    display(pd.read_csv(cmp / "space_scores.csv", header=[0, 1], index_col=0))
if (cmp / "partition_summary.csv").exists():
    display(pd.read_csv(cmp / "partition_summary.csv").pivot_table(
        index="measure", columns="target", values="mean").round(4))
for p in sorted(cmp.glob("partition_*.png")):
    figure(p, f"Variance partition ({p.stem.replace('partition_', '')}): joint r|r|, unique share "
              f"of each space (and of the tested space against its placebo), shared; bars: mean over subjects, dots: subjects.")
for p in sorted(cmp.glob("glass_partition_*.png")):
    figure(p, f"Group-mean unique share of the space named in the title against its placebo, in "
              f"voxels where it survives the across-subject sign-flip test (q < {fdr_q}).")
figure(cmp / "alpha_diagnostic.png", "Share of ridge penalties chosen at each value of the grid, "
       "per model: mass at an end of the grid says widen it.")

# %% [markdown]
# ### Layer profile

# %%
for p in sorted(cmp.glob("layer_profile_*.png")):
    figure(p, f"Brain score of every layer ({p.stem.replace('layer_profile_', '')} target): mean "
              f"over subjects, band: bootstrap 95% CI over subjects.")

# %% [markdown]
# ### Fine-tuning: held-out perplexity before → after

# %%
compare.sft_summary(run / "sft" / "models.csv")

# %% [markdown]
# ### Per-subject scores

# %%
tab = pd.read_csv(cmp / "subject_scores.csv")
tab.pivot_table(index=["target", "subject"], columns="condition", values="brain_score").round(3)

# %% [markdown]
# ### Methods in one table

# %%
report.method_table(run, params)

# %% [markdown]
# ### What each number is

# %%
report.score_definitions()

# %% [markdown]
# ### Parameters of this run

# %%
report.params_table(params)

# %% [markdown]
# ### Stage notebooks

# %%
nbs = sorted((run / "notebooks").glob("*.ipynb"))
display(Markdown("\n".join(f"- [{p.stem}]({p.as_posix()})" for p in nbs)))
