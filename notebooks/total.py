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
# linked below hold every detail; this page gathers the header, the Δ table and the key figures.

# %% tags=["parameters"]
run_dir = "results/mini"

# %%
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from IPython.display import Image, Markdown, display

from lib import compare, plots, report

run = Path(run_dir)
params = report.load_params(run)
header = report.run_header(run, params)
synthetic = header.loc["data", "value"].startswith("SYNTHETIC")
if synthetic:
    display(Markdown("> **SYNTHETIC BOLD.** The fMRI data in this run are generated (real pieman "
                     "stimuli, planted signal in superior temporal voxels). The numbers test the "
                     "pipeline, not the brain."))
header

# %% [markdown]
# ## Methods in one table

# %%
report.method_table(run, params)

# %% [markdown]
# ## What each number is

# %%
report.score_definitions()

# %% [markdown]
# ## Stage notebooks

# %%
nbs = sorted((run / "notebooks").glob("*.ipynb"))
display(Markdown("\n".join(f"- [{p.stem}]({p.as_posix()})" for p in nbs)))

# %% [markdown]
# ## Fine-tuning: held-out perplexity before → after

# %%
compare.sft_summary(run / "sft" / "models.csv")

# %% [markdown]
# ## Δ brain score across subjects
# Contrasts: `sft − raw` (the question), `control − raw` and `scrambled − raw` (same budget on
# word-shuffled / utterance-scrambled text), `sft − control` and `sft − scrambled` (what narrative
# language adds beyond any extra training), and sanity checks `raw − random` and `raw − word_rate`.
# The subject is the unit. Targets: `whole_brain_mean` (the mean BOLD over the mask per TR),
# `voxels_mean` (mean voxel score over the mask), `voxels_reliable` and `voxels_top10pct` (voxels
# selected by the other subjects' noise ceiling), `roi-N` (mean BOLD of label N; in narratives-mini
# label 1 is the planted superior-temporal mask) and `planted_roi_voxels` (synthetic data only).

# %%
stats = pd.read_csv(run / "compare" / "stats.csv")
display(Markdown(f"**{compare.headline(stats, synthetic=synthetic)}**"))
dt = pd.read_csv(run / "compare" / "delta_table.csv")
dt[dt.measure == "brain_score"]

# %% [markdown]
# The same contrasts above the chance level and normalised by the noise ceiling:

# %%
dt[dt.measure != "brain_score"].dropna(subset=["mean_delta"])

# %% [markdown]
# ## Feature spaces and variance partitioning
# Each space's brain score alone (with its chance level), and the banded-ridge partition: what
# the fine-tuned model explains that the raw model and the low-level spaces do not
# (`unique lm:sft`), and the reverse (`unique lm:raw`).

# %%
cmp = run / "compare"
if (cmp / "space_scores.csv").exists():
    display(pd.read_csv(cmp / "space_scores.csv", header=[0, 1], index_col=0))
if (cmp / "partition_summary.csv").exists():
    display(pd.read_csv(cmp / "partition_summary.csv").pivot_table(
        index="measure", columns="target", values="mean").round(4))
for p in sorted(cmp.glob("partition_*.png")) + sorted(cmp.glob("glass_partition_*.png")):
    display(Image(filename=str(p)))

# %% [markdown]
# ## Per-subject scores

# %%
tab = pd.read_csv(run / "compare" / "subject_scores.csv")
tab.pivot_table(index=["target", "subject"], columns="condition", values="brain_score").round(3)

# %% [markdown]
# ## Figures

# %%

names = ["paired_whole_brain_mean.png", "paired_voxels_reliable.png", "delta_distribution.png"]
names += sorted(p.name for p in (run / "compare").glob("layer_profile_*.png"))
for name in names:
    p = run / "compare" / name
    if p.exists():
        display(Image(filename=str(p)))

# %% [markdown]
# ## Brain maps (nilearn)

# %%
cmp = run / "compare"
tag = " [synthetic BOLD]" if synthetic else ""
imgs = {k: nib.load(str(cmp / f"group_{k}.nii.gz")) for k in ("raw", "sft", "delta")
        if (cmp / f"group_{k}.nii.gz").exists()}
vmax = max([float(np.abs(imgs[k].get_fdata()).max()) for k in ("raw", "sft") if k in imgs] + [1e-3])
for k, img in imgs.items():
    title = f"{k}: group brain score, FDR q<0.05{tag}" if k != "delta" else f"Δ sft − raw (significant voxels){tag}"
    plots.stat_map(img, title, vmax=vmax if k != "delta" else None)
for k in ("raw", "delta"):
    if k in imgs:
        plots.glass_brain(imgs[k], f"{k}{tag}", vmax=vmax if k != "delta" else None)
if "raw" in imgs:
    plots.surface(imgs["raw"], f"raw model, fsaverage5{tag}", vmax=vmax)
display(Markdown("Interactive viewers: " + ", ".join(
    f"[{p.name}]({p.as_posix()})" for p in sorted(cmp.glob("view_*.html")))))
