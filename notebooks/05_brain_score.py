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
# each run) to BOLD. **Folds**: leave one story out when a subject heard several stories; within
# one story, contiguous blocks of story time held out in every hearing at once, with a **gap** of
# `max(delays) + 25` TRs dropped from training on each side (the measured value that removes the
# autocorrelation leak: docs/validity.md). The penalty is chosen per target on blocked **inner
# folds** (same gap), each standardised on its own fit rows. **Brain score = mean over folds of
# the per-fold Pearson r** on held-out TRs, per run; **chance score** = the same with the features
# shifted in time by half the story. Targets: every voxel, the whole-brain mean BOLD per TR, ROI
# means. Group tests: block permutation of story time (30-TR blocks, the same for every subject),
# Besag–Clifford sequential stopping, Benjamini–Hochberg FDR; with enough subjects a random-effects
# map (nilearn, TFCE). Noise ceiling: leave-one-subject-out ISC corrected by Spearman–Brown, and the
# repeat-based ceiling where a subject heard a story twice.

# %% tags=["parameters"]
run_dir = "results/mini"
delays = [1, 2, 3, 4, 5]
aggregation = "sum"               # sum | mean | lanczos
# alphas: the ridge penalty grid; empty means logspace(-1, 8, 10)
alphas = []
n_folds = 5
inner_folds = 4
gap = None                        # TRs between training and test blocks; None: max(delays) + 37.5 s
n_perm = 1000
null_method = "block"             # block (of story time) | shift (circular, at least 30 TRs)
perm_block = None                 # TRs per permutation block; None: 45 s of story time
perm_conditions = ["raw", "sft"]
chance = True                     # also fit time-mismatched features (the empirical chance level)
feature_spaces = ["word_rate"]    # spaces fitted alone beside the LMs (word_rate, phonemes, ...)
partition = []                    # e.g. [word_rate, lm:raw, lm:sft]: variance partitioning
partition_n_iter = 20             # band weightings tried by the banded ridge's random search
partition_null = []               # spaces whose unique R² is tested across subjects (sign flips)
fdr_q = 0.05
re_min_subjects = 6               # random-effects maps need at least this many subjects
ridge_backend = "numpy"           # numpy | torch (CUDA when present, else CPU)
mask = "auto"                     # a NIfTI path (a mask.npz on a surface), or auto
roi_labels = "auto"               # a labels NIfTI in the BOLD grid, auto (planted mask for mini), or None
roi_atlas = "harvard_oxford"      # named language ROIs from this atlas (or a labels image path; None)
roi_atlas_labels = None           # with an atlas path: its CSV (index,name)
roi_set = "language"              # language (lib/rois.py: IFG, TP, STG, MTG, AG, SMG; L and R) | all
roi_min_voxels = 5                # an ROI with fewer voxels on the BOLD grid is dropped (listed)
device = "auto"
threads = "auto"
cluster = "none"                  # none | local | slurm | tcp://host:port (see lib/cluster.py)
workers = 2
slurm = {}

# %%
from pathlib import Path

import numpy as np
from IPython.display import display

from lib import brain_score, cluster as cl, data, encoding, features, geometry
from lib.engine.inference import NullSpec
from lib.engine.ridge import DEFAULT_ALPHAS

n_threads = cl.use_threads(threads)
run = Path(run_dir)
manifest = data.read_manifest(run / "data" / "data_manifest.csv")
index = features.read_index(run / "features" / "activations_index.csv")
tr = data.single_tr(manifest)     # the time constants (gap, permutation blocks) are in seconds
mask_img = encoding.brain_mask(manifest, mask)
labels, roi_names, roi_table = encoding.named_rois(
    mask_img, encoding.roi_labels_for(manifest, roi_labels), roi_atlas, roi_atlas_labels, roi_set,
    roi_min_voxels)
settings = encoding.Settings(
    delays=tuple(delays), aggregation=aggregation,
    alphas=tuple(alphas) if len(alphas) else tuple(DEFAULT_ALPHAS), n_folds=n_folds,
    inner_folds=inner_folds, gap=gap,
    null=NullSpec.for_tr(tr, perm_block, n_perm=n_perm, method=null_method), tr=tr,
    perm_conditions=tuple(perm_conditions), chance=chance, backend=ridge_backend,
    device=None if device == "auto" else device, spaces=tuple(feature_spaces),
    partition=tuple(partition), partition_n_iter=partition_n_iter,
    partition_null=tuple(partition_null))
job = encoding.make_job(manifest, run / "transcripts", index, run / "brain_score", mask_img,
                        settings, labels, roi_names)
with cl.client_for(cluster, n_threads, dict(workers=workers, slurm=slurm)) as client:
    res = brain_score.run_stage(job, fdr_q=fdr_q, re_min_subjects=re_min_subjects, client=client)
scores = res["scores"]
print(f"{len(scores)} scores; mask has {geometry.n_targets(mask_img)} "
      f"{geometry.unit_name(mask_img)}; "
      f"{'SYNTHETIC BOLD' if manifest.synthetic_bold.any() else 'real BOLD'}; "
      f"folds: {scores.fold_scheme.iloc[0]}")

# %% [markdown]
# ## Whole-brain mean and ROI targets, per subject and run (chance level beside each score)

# %%
scores[scores.target != "voxels_mean"].pivot_table(
    index=["target", "subject", "story", "run"], columns="condition",
    values=["brain_score", "chance_score"]).round(3)

# %% [markdown]
# ## ROIs: voxels of each on this grid (the atlas's named language ROIs, and the labels image's)

# %%
roi_table

# %% [markdown]
# ## Mean voxel score per run

# %%
scores[scores.target == "voxels_mean"].pivot_table(
    index=["subject", "story", "run"], columns="condition",
    values=["brain_score", "chance_score"]).round(3)

# %% [markdown]
# ## Group tests of the summary targets (block permutation, the same shuffles for every subject)

# %%
res["group_tests"] if "group_tests" in res else None

# %% [markdown]
# ## Noise ceiling (LOSO ISC, Spearman–Brown corrected; repeat-based where a story was heard twice)

# %%
nc = res["noise_ceiling"]
nc.pivot_table(index=["subject", "story", "run"], columns=["ceiling_kind", "target"],
               values="noise_ceiling").round(3) if len(nc) else "fewer than 2 subjects per story"

# %% [markdown]
# ## Group map of each permuted condition, FDR-thresholded

# %%
from lib import plots

for cond, g in res["group"].items():
    if "fdr" in g:
        img = plots.to_img(np.where(g["fdr"], g["score"], 0), mask_img)
        plots.glass_brain(img, f"{cond}: group brain score, FDR q<{fdr_q} ({int(g['fdr'].sum())} "
                          f"{geometry.unit_name(mask_img)})"
                          + (" [synthetic BOLD]" if manifest.synthetic_bold.any() else ""))

# %% [markdown]
# ## Variance partitioning (banded ridge; held-out R², test-centred, averaged like brain scores)

# %%
part = res["partition"]
if len(part):
    display(part.groupby(["target", "measure"]).r2.mean().unstack("measure").round(4))
else:
    print("no partition in this run (partition: [])")
res["spaces_skipped"]

# %% [markdown]
# Warnings raised while fitting (alpha at the grid edge, constant voxels), and units:

# %%
scores.loc[scores.warnings.astype(str).str.len() > 0,
           ["subject", "condition", "target", "alpha_edge_fraction", "warnings"]].drop_duplicates()
