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
# # 05 · Encoding models and brain scores
#
# Ridge regression from delayed word features (sum per TR, FIR delays 1–5 TRs, zero-padded within
# the run) to BOLD, in contiguous cross-validation folds with a gap of `max(delays)` TRs between
# training and test, features and BOLD standardised on training data, one penalty per target
# chosen on a contiguous inner validation block. **Brain score = mean over folds of the per-fold
# Pearson r** on held-out TRs. Targets: the whole-brain mean BOLD per TR, every voxel (maps), ROI
# means. Group maps get a block-permutation null (BOLD shuffled in blocks, the same shuffles for
# every subject) and Benjamini–Hochberg FDR. The noise ceiling is the leave-one-subject-out ISC.

# %% tags=["parameters"]
run_dir = "results/mini"
delays = [1, 2, 3, 4, 5]
aggregation = "sum"               # sum | mean of the word activations in a TR
# alphas: the ridge penalty grid; empty means logspace(-1, 8, 10)
alphas = []
n_folds = 5
n_perm = 1000
perm_block = 10
perm_conditions = ["raw", "sft"]
ridge_backend = "torch"           # numpy | torch (CUDA when present, else CPU)
mask = "auto"                     # a NIfTI path, or auto
roi_labels = "auto"               # a labels NIfTI in the BOLD grid, auto (planted mask for mini), or None
device = "auto"
threads = 2

# %%
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from lib import data, encoding, features

torch.set_num_threads(threads)
run = Path(run_dir)
out = run / "brain_score"
manifest = data.read_manifest(run / "data" / "data_manifest.csv")
index = features.read_index(run / "features" / "activations_index.csv")
mask_img = encoding.brain_mask(manifest, mask)
labels = roi_labels
if roi_labels == "auto":
    first = Path(manifest.bold_path.iloc[0])
    cand = [p / "derivatives" / "synthetic-truth" / "planted_mask.nii.gz" for p in first.parents]
    labels = next((c for c in cand if c.exists()), None)
with threadpool_limits(threads):
    res = encoding.run_stage(
        manifest, run / "transcripts", index, out, mask_img, delays=delays,
        aggregation=aggregation, alphas=np.asarray(alphas) if len(alphas) else encoding.DEFAULT_ALPHAS,
        n_folds=n_folds, n_perm=n_perm, perm_block=perm_block, perm_conditions=perm_conditions,
        backend=ridge_backend, device=None if device == "auto" else device, roi_labels=labels)
scores = res["scores"]
print(f"{len(scores)} scores; mask has {int((mask_img.get_fdata() > 0).sum())} voxels; "
      f"{'SYNTHETIC BOLD' if manifest.synthetic_bold.any() else 'real BOLD'}")

# %% [markdown]
# ## Whole-brain-mean target, per subject and condition (p from the block permutation)

# %%
scores[scores.target == "whole_brain_mean"].pivot_table(
    index=["subject", "story", "run"], columns="condition", values="brain_score").round(3)

# %% [markdown]
# ## Mean voxel score and ROI scores

# %%
scores[scores.target != "whole_brain_mean"].pivot_table(
    index=["target", "subject"], columns="condition", values="brain_score").round(3)

# %% [markdown]
# ## Noise ceiling (leave-one-subject-out ISC)

# %%
res["noise_ceiling"]

# %% [markdown]
# ## Group map of the raw model, FDR-thresholded

# %%
from lib import plots

g = res["group"]
for cond in ("raw", "sft"):
    key = f"{cond}_seed0_score"
    if key in g:
        sig = g[f"{cond}_seed0_fdr05"]
        img = plots.to_img(np.where(sig, g[key], 0), mask_img)
        plots.glass_brain(img, f"{cond}: group brain score, FDR q<0.05 ({int(sig.sum())} voxels)"
                          + (" [synthetic BOLD]" if manifest.synthetic_bold.any() else ""))

# %% [markdown]
# Warnings raised while fitting (alpha at the grid edge, constant voxels), if any:

# %%
scores.loc[scores.warnings.astype(str).str.len() > 0, ["subject", "condition", "target", "warnings"]]
