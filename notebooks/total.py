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
# # Does fine-tuning a language model on Narratives text change its brain score?
#
# Master report of one pipeline run (`python -m lib.pipeline`, or `make report` for the embedded
# default). Question: does supervised fine-tuning (SFT) on Narratives story text change how well a
# language model's layer activations predict fMRI responses to those stories? The stage notebooks
# (linked at the end) hold every detail; this page gathers the answer, its statistics, the figures
# and how each number was made.

# %% tags=["parameters"]
run_dir = "results/mini"

# %%
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from lib import compare, plots, report

pd.set_option("display.max_colwidth", 200)
run = Path(run_dir)
cmp = run / "compare"
params = report.load_params(run)
header = report.run_header(run, params)
synthetic = header.loc["data", "value"].startswith("SYNTHETIC")
tag = " [synthetic BOLD]" if synthetic else ""
fdr_q = params.get("fdr_q", 0.05)

figure = report.figure

if synthetic:
    display(Markdown("> **SYNTHETIC BOLD.** The fMRI data in this run are generated (real pieman "
                     "stimuli, planted signal in superior temporal voxels). The numbers test the "
                     "pipeline, not the brain."))
header

# %% [markdown]
# ## The answer

# %%
stats = pd.read_csv(cmp / "stats.csv")
display(Markdown(f"**{compare.headline(stats, synthetic=synthetic)}**"))
figure(cmp / "paired_whole_brain_mean.png", "Brain score of the raw and the fine-tuned model for "
       "each subject (grey) and their mean (red): whole-brain-mean BOLD target.")
figure(cmp / "delta_distribution.png", "Distribution over voxels of Δ brain score (SFT − raw) "
       "per subject; filled: voxels FDR-significant for either model "
       f"(block permutation, q < {fdr_q}).")

# %% [markdown]
# ## Δ brain score across subjects
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
# ## Brain maps
# Group-mean brain score (mean over subjects of each subject's map) of the raw and the fine-tuned
# model in the voxels that survive the group block-permutation test (BH-FDR), and Δ (SFT − raw)
# in voxels significant for either model. One colour scale for both models.

# %%
imgs = {k: nib.load(str(cmp / f"group_{k}.nii.gz")) for k in ("raw", "sft", "delta")
        if (cmp / f"group_{k}.nii.gz").exists()}
vmax = max([float(np.abs(imgs[k].get_fdata()).max()) for k in ("raw", "sft") if k in imgs] + [1e-3])
for k, img in imgs.items():
    title = (f"{k}: group brain score, FDR q<{fdr_q}{tag}" if k != "delta"
             else f"Δ sft − raw (significant voxels){tag}")
    plots.glass_brain(img, title, vmax=vmax if k != "delta" else None)
    display(Markdown(f"*Glass brain, {('Pearson r' if k != 'delta' else 'Δr')}, voxels with "
                     f"q < {fdr_q}; zero elsewhere.*"))
if "raw" in imgs:
    plots.surface(imgs["raw"], f"raw model, fsaverage5{tag}", vmax=vmax)
    display(Markdown(f"*The raw model's thresholded map (q < {fdr_q}) projected on the "
                     f"fsaverage5 inflated surface, lateral views.*"))
display(Markdown("Interactive viewers (open offline in a browser): " + ", ".join(
    f"[{p.name}]({p.as_posix()})" for p in sorted(cmp.glob("view_*.html")))))

# %% [markdown]
# ## Feature spaces and variance partitioning
# Each space's brain score alone (with its chance level), and the banded-ridge partition: what
# the fine-tuned model explains that the raw model and the low-level spaces do not
# (`unique lm:sft`), and the reverse (`unique lm:raw`). Held-out R², centred on each test block.

# %%
if (cmp / "space_scores.csv").exists():
    display(pd.read_csv(cmp / "space_scores.csv", header=[0, 1], index_col=0))
if (cmp / "partition_summary.csv").exists():
    display(pd.read_csv(cmp / "partition_summary.csv").pivot_table(
        index="measure", columns="target", values="mean").round(4))
for p in sorted(cmp.glob("partition_*.png")):
    figure(p, f"Variance partition ({p.stem.replace('partition_', '')}): joint R², unique R² of "
              f"each space, shared R²; bars: mean over subjects, dots: subjects.")
for p in sorted(cmp.glob("glass_partition_*.png")):
    figure(p, f"Group-mean unique R² of the space named in the title, in voxels where it "
              f"survives the group block-permutation test (q < {fdr_q}).")
figure(cmp / "alpha_diagnostic.png", "Share of ridge penalties chosen at each value of the grid, "
       "per model: mass at an end of the grid says widen it.")

# %% [markdown]
# ## Layer profile

# %%
for p in sorted(cmp.glob("layer_profile_*.png")):
    figure(p, f"Brain score of every layer ({p.stem.replace('layer_profile_', '')} target): mean "
              f"over subjects, band: bootstrap 95% CI over subjects.")

# %% [markdown]
# ## Fine-tuning: held-out perplexity before → after

# %%
compare.sft_summary(run / "sft" / "models.csv")

# %% [markdown]
# ## Per-subject scores

# %%
tab = pd.read_csv(cmp / "subject_scores.csv")
tab.pivot_table(index=["target", "subject"], columns="condition", values="brain_score").round(3)

# %% [markdown]
# ## Methods in one table

# %%
report.method_table(run, params)

# %% [markdown]
# ## What each number is

# %%
report.score_definitions()

# %% [markdown]
# ## Parameters of this run

# %%
report.params_table(params)

# %% [markdown]
# ## Stage notebooks

# %%
nbs = sorted((run / "notebooks").glob("*.ipynb"))
display(Markdown("\n".join(f"- [{p.stem}]({p.as_posix()})" for p in nbs)))
