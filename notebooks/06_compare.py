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
# # 06 · Does fine-tuning change brain scores?
#
# Paired comparisons across subjects (the unit of inference; runs, stories and seeds averaged
# within subject first): number of subjects improved, mean Δ with a bootstrap 95% CI, paired
# Wilcoxon and t tests, Cohen's d_z, and noise-ceiling-normalised versions. Voxel summaries: the mask
# mean, the top 10% voxels of the raw model chosen on the *other* subjects, and the ROI. Maps: raw,
# SFT and Δ, thresholded by the group block-permutation FDR of stage 05.

# %% tags=["parameters"]
run_dir = "results/mini"
top_frac = 0.1
fdr_q = 0.05

# %%
from pathlib import Path

import numpy as np
import pandas as pd
import nibabel as nib

from lib import compare, plots
from lib.cache import save_nifti, write_csv

run = Path(run_dir)
out = run / "compare"
st = compare.load_stage05(run / "brain_score")
mask_img = nib.load(str(run / "brain_score" / "mask.nii.gz"))
synthetic = bool(st["scores"].synthetic_bold.astype(str).str.lower().eq("true").any())
roi = st["scores"].target.str.startswith("roi-").any()
planted = None
if synthetic:
    from lib.data import read_manifest
    from lib.synthetic import load_truth

    m = read_manifest(run / "data" / "data_manifest.csv")
    root = next(p for p in Path(m.bold_path.iloc[0]).parents
                if (p / "derivatives" / "synthetic-truth").exists())
    planted = load_truth(root)["planted_in_mask"].astype(bool)
tab = compare.subject_table(st, top_frac, planted)
deltas, stats = compare.contrast_table(tab)
_, stats_norm = compare.contrast_table(tab, value="normalised_score")
write_csv(out / "subject_scores.csv", tab)
write_csv(out / "delta_subjects.csv", deltas)
write_csv(out / "stats.csv", pd.concat([stats, stats_norm.dropna(subset=["mean_delta"])]))
print("SYNTHETIC BOLD" if synthetic else "real BOLD", "->", out)

# %% [markdown]
# ## Δ brain score (SFT − raw and controls), statistics across subjects

# %% tags=["report"]
cols = ["contrast", "target", "n_subjects", "n_improved", "mean_delta", "ci95_low", "ci95_high",
        "p_wilcoxon", "p_t", "cohens_dz"]
delta_table = stats[[c for c in cols if c in stats]].round(4)
write_csv(out / "delta_table.csv", delta_table)
delta_table

# %% [markdown]
# ## Noise-ceiling-normalised Δ

# %%
stats_norm.dropna(subset=["mean_delta"])[[c for c in cols if c in stats_norm]].round(4)

# %% [markdown]
# ## Per subject: raw → SFT

# %% tags=["report"]
fig = plots.paired_scores(tab, "whole_brain_mean", "raw", "sft", synthetic)
plots.save(fig, out / "paired_whole_brain_mean.png")
target = "planted_roi_voxels" if planted is not None else "voxels_top10pct_loso"
fig = plots.paired_scores(tab, target, "raw", "sft", synthetic)
plots.save(fig, out / f"paired_{target}.png")

# %% [markdown]
# ## Distribution of Δ over voxels

# %% tags=["report"]
g = st["group"]
sig = None
if "raw_seed0_fdr05" in g:
    sig = g["raw_seed0_fdr05"] | g.get("sft_seed0_fdr05", np.zeros_like(g["raw_seed0_fdr05"]))
vd = compare.voxel_delta(st["voxels"], "sft", "raw")
vsum = compare.voxel_delta_summary(vd, sig)
write_csv(out / "voxel_delta_summary.csv", vsum)
fig = plots.delta_distribution(vd, sig, "sft - raw", synthetic)
plots.save(fig, out / "delta_distribution.png")
vsum

# %% [markdown]
# ## Brain maps
# Group-mean brain score of the raw and fine-tuned models (FDR q < 0.05, block permutation), and
# Δ (SFT − raw) shown in voxels significant for either model.

# %% tags=["report"]
tag = " [synthetic BOLD]" if synthetic else ""
imgs = {}
for cond in ("raw", "sft"):
    if f"{cond}_seed0_score" in g:
        s = np.where(g[f"{cond}_seed0_fdr05"], g[f"{cond}_seed0_score"], 0)
        imgs[cond] = plots.to_img(s, mask_img)
if vd:
    dmean = np.nanmean(list(vd.values()), 0)
    imgs["delta"] = plots.to_img(np.where(sig, dmean, 0) if sig is not None else dmean, mask_img)
vmax = max([float(np.abs(i.get_fdata()).max()) for k, i in imgs.items() if k != "delta"] + [1e-3])
for k, img in imgs.items():
    save_nifti(img, out / f"group_{k}.nii.gz")
    title = f"{k}: group brain score (FDR q<{fdr_q}){tag}" if k != "delta" else f"Δ sft − raw{tag}"
    fig = plots.stat_map(img, title, vmax=vmax if k != "delta" else None)
    plots.save(fig, out / f"map_{k}.png")
    fig = plots.glass_brain(img, title, vmax=vmax if k != "delta" else None)
    plots.save(fig, out / f"glass_{k}.png")

# %% tags=["report"]
if "raw" in imgs:
    fig = plots.surface(imgs["raw"], f"raw model on fsaverage5{tag}", vmax=vmax)
    plots.save(fig, out / "surface_raw.png")
    plots.save_view_img(imgs["raw"], out / "view_raw.html", f"raw brain score{tag}", vmax=vmax)
if "delta" in imgs:
    plots.save_view_img(imgs["delta"], out / "view_delta.html", f"Δ sft − raw{tag}")

# %% [markdown]
# ## Layer profile (when every layer was extracted: `layer_profile: true`)

# %% tags=["report"]
lp_path = run / "brain_score" / "layer_scores.csv"
if lp_path.exists():
    lp = pd.read_csv(lp_path)
    lp = lp.groupby(["subject", "condition", "layer", "target"], as_index=False)["brain_score"].mean()
    write_csv(out / "layer_profile.csv", lp)
    for target in sorted(lp.target.unique()):
        fig = plots.layer_profile(lp[lp.target == target], synthetic)
        fig.axes[0].set_title(f"Layer profile: {target}" + (" [synthetic BOLD]" if synthetic else ""),
                              fontsize=10)
        plots.save(fig, out / f"layer_profile_{target}.png")
else:
    print("no layer profile in this run (layer_profile: false)")

# %% [markdown]
# ## Fine-tuning record

# %%
compare.sft_summary(run / "sft" / "models.csv")
