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
# Paired comparisons across subjects, the unit of inference (runs averaged within a story, stories
# equally, then seeds). For every contrast: subjects improved, mean Δ with a Student-t 95% CI,
# exact sign-flip permutation p (and Wilcoxon, t, Cohen's d_z), with the smallest p the sign tests
# can reach for this number of subjects. Each measure three ways: the brain score r, r above its
# chance level (time-mismatched features), and r / noise ceiling. Voxel summaries select voxels
# without any model's map — `voxels_reliable`: group ISC significant (FDR) against circular shifts;
# `voxels_top10pct`: the other subjects' noise ceiling — so they favour neither model.

# %% tags=["parameters"]
run_dir = "results/mini"
top_frac = 0.1
fdr_q = 0.05
min_ceiling = 0.1                 # normalised scores only where the ceiling is at least this

# %%
from pathlib import Path

import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from lib import compare, geometry, plots
from lib.cache import write_csv

run = Path(run_dir)
out = run / "compare"
st = compare.load_stage05(run / "brain_score")
mask_img = geometry.load_geometry(run / "brain_score")     # a volume's mask, or a mesh's
synthetic = bool(st["scores"].synthetic_bold.astype(str).str.lower().eq("true").any())
planted = None
if synthetic:
    from lib.synthetic import truth_for_run

    truth = truth_for_run(run)
    planted = (truth["planted_vertices"][mask_img.mask] if geometry.is_surface(mask_img)
               else truth["planted_in_mask"]).astype(bool)
tab = compare.subject_table(st, top_frac, planted, min_ceiling)
stats = pd.concat([compare.contrast_table(tab, value=m)[1] for m in compare.MEASURES],
                  ignore_index=True)
deltas = compare.contrast_table(tab)[0]
stats, seed_scores = compare.with_crossed(stats, st, top_frac, planted, min_ceiling)
write_csv(out / "subject_scores.csv", tab)
if len(seed_scores):
    write_csv(out / "seed_scores.csv", seed_scores)
write_csv(out / "delta_subjects.csv", deltas)
write_csv(out / "stats.csv", stats)
print("SYNTHETIC BOLD" if synthetic else "real BOLD", "->", out)

# %% [markdown]
# ## Δ brain score (SFT − raw and controls), statistics across subjects

# %% tags=["report"]
cols = ["contrast", "target", "measure", "n_subjects", "n_improved", "mean_delta", "ci95_low",
        "ci95_high", "p_sign_flip", "p_wilcoxon", "p_t", "cohens_dz", "p_min_attainable",
        "n_seeds", "crossed_delta", "crossed_ci_low", "crossed_ci_high", "crossed_p", "seed_sd",
        "mde", "seed_deltas"]
delta_table = stats[[c for c in cols if c in stats]].round(4)
write_csv(out / "delta_table.csv", delta_table)
headline = compare.headline(stats, synthetic=synthetic)
display(Markdown(f"**{headline}**"))
delta_table[delta_table.measure == "brain_score"]

# %% [markdown]
# ## The same Δ above chance and normalised by the noise ceiling

# %%
delta_table[delta_table.measure != "brain_score"].dropna(subset=["mean_delta"])

# %% [markdown]
# ## Named language ROIs (Harvard-Oxford, left and right)
# Brain score of each model per ROI (mean BOLD of the ROI as the target), and Δ (SFT − raw)
# tested across subjects, with Benjamini-Hochberg q across the ROIs (`q_roi`).

# %% tags=["report"]
roi_table = compare.roi_summary(tab, stats)
if len(roi_table):
    write_csv(out / "roi_table.csv", roi_table)
    fig = plots.roi_scores(tab, ("raw", "sft"), synthetic)
    plots.save(fig, out / "roi_scores.png")
roi_table if len(roi_table) else "no named ROI in this run (roi_atlas: null)"

# %% [markdown]
# ## Per subject: raw → SFT

# %% tags=["report"]
for target in ("whole_brain_mean", "voxels_reliable"):
    fig = plots.paired_scores(tab, target, "raw", "sft", synthetic)
    plots.save(fig, out / f"paired_{target}.png")

# %% [markdown]
# ## Distribution of Δ over voxels (SFT − raw, seeds averaged as in the Δ table)
# The summary over selected voxels uses the ISC-reliable voxels (the response to the story is
# reliable across subjects), never voxels significant for either model: selecting on a model's
# map would favour it.

# %% tags=["report"]
g = st["group"]
reliable = compare.reliable_voxels(st["voxels"])
vd = compare.voxel_delta(st["voxels"], "sft", "raw")
vsum = compare.voxel_delta_summary(vd, reliable)
write_csv(out / "voxel_delta_summary.csv", vsum)
fig = plots.delta_distribution(vd, reliable, "sft - raw", synthetic)
plots.save(fig, out / "delta_distribution.png")
vsum

# %% [markdown]
# ## Brain maps
# Group-mean brain score of the raw and fine-tuned models (FDR q < `fdr_q`, block permutation), and
# Δ (SFT − raw) shown in the ISC-reliable voxels (selected by neither model).

# %% tags=["report"]
tag = " [synthetic BOLD]" if synthetic else ""
imgs = {}
for cond in ("raw", "sft"):
    if f"{cond}_score" in g:
        imgs[cond] = plots.to_img(np.where(g[f"{cond}_fdr"], g[f"{cond}_score"], 0), mask_img)
if vd:
    dmean = np.nanmean(list(vd.values()), 0)
    imgs["delta"] = plots.to_img(np.where(reliable, dmean, 0) if reliable is not None else dmean,
                                 mask_img)
vmax = max([float(np.abs(i.get_fdata()).max()) for k, i in imgs.items() if k != "delta"] + [1e-3])
for k, img in imgs.items():
    plots.save_img(img, out / f"group_{k}.nii.gz")
    title = (f"{k}: group brain score (FDR q<{fdr_q}){tag}" if k != "delta"
             else f"Δ sft − raw in ISC-reliable voxels{tag}")
    fig = plots.stat_map(img, title, vmax=vmax if k != "delta" else None)
    plots.save(fig, out / f"map_{k}.png")
    fig = plots.glass_brain(img, title, vmax=vmax if k != "delta" else None)
    plots.save(fig, out / f"glass_{k}.png")

# %% tags=["report"]
if "raw" in imgs:
    fig = plots.surface(imgs["raw"], f"raw model on fsaverage5{tag}", vmax=vmax)
    plots.save(fig, out / "surface_raw.png")
for k, name in (("raw", "raw: r"), ("delta", "Δr sft − raw")):
    if k in imgs:   # the FDR map, or -- when nothing survives -- the unthresholded one, said so
        full = plots.to_img(g[f"{k}_score"] if k != "delta" else dmean, mask_img)
        plots.save_view_img(imgs[k], out / f"view_{k}.html", name + (" [synthetic]" if synthetic
                                                                     else ""),
                            fallback=full, vmax=vmax if k != "delta" else None)

# %% [markdown]
# ## Random-effects maps (nilearn second level, TFCE, FWE) — when there are enough subjects

# %% tags=["report"]
re_keys = sorted(k for k in g if "_re_" in k and "logp" in k)
if re_keys:
    for k in re_keys:
        fig = plots.glass_brain(plots.to_img(g[k], mask_img), f"{k} (-log10 FWE p){tag}")
        plots.save(fig, out / f"re_{k}.png")
else:
    n = st["scores"].subject.nunique()
    print(f"{n} subjects: too few for a random-effects map (the profile's re_min_subjects)")

# %% [markdown]
# ## Feature spaces and variance partitioning
# Brain score of each feature space alone (and its chance level), then the banded-ridge partition:
# what each space explains that the others do not (`unique`), what they share, and each space's
# share of the joint model's r|r| (the signed square of its held-out r). The headline contrasts:
# unique variance of the fine-tuned model over the raw one (and the low-level spaces), and of the
# raw over the fine-tuned one; a tested space's unique share against its conditional placebo
# (`unique_vs_placebo`: its part that the other spaces explain kept, its residual shifted in
# time) is what the across-subject test uses. Left-out spaces (missing audio, lexicon gaps) are listed, not silently dropped.

# %% tags=["report"]
space_scores = tab[tab.target.isin(["whole_brain_mean", "voxels_mean", "voxels_reliable",
                                    "voxels_top10pct"])].pivot_table(
    index="condition", columns="target", values=["brain_score", "chance_score"]).round(4)
write_csv(out / "space_scores.csv", space_scores.reset_index())
display(space_scores)
ptab = compare.partition_table(st, planted)
if len(ptab):
    write_csv(out / "partition_subjects.csv", ptab)
    psum = ptab.groupby(["target", "measure"]).r2.agg(["mean", "std", "count"]).round(5)
    write_csv(out / "partition_summary.csv", psum.reset_index())
    for target in [t for t in ("whole_brain_mean", "voxels_reliable", "voxels_mean",
                               "planted_roi_voxels") if t in set(ptab.target)]:
        fig = plots.partition_bars(ptab, target, synthetic)
        plots.save(fig, out / f"partition_{target}.png")
    display(psum)
if len(st["spaces_skipped"]):
    display(st["spaces_skipped"])

# %% tags=["report"]
for k in sorted(k[:-len("_fdr")] for k in g if k.startswith("partition_") and k.endswith("_fdr")):
    img = plots.to_img(np.where(g[f"{k}_fdr"], g[f"{k}_score"], 0), mask_img)
    name = k.replace("partition_", "").replace(":", " ")
    plots.save_img(img, out / f"group_{k.replace(':', '-')}.nii.gz")
    fig = plots.glass_brain(img, f"{name}: group mean r|r|, FDR q<{fdr_q} "
                            f"({int(g[f'{k}_fdr'].sum())} voxels){tag}")
    plots.save(fig, out / f"glass_{k.replace(':', '-')}.png")

# %% tags=["report"]
alphas = pd.read_csv(run / "brain_score" / "alphas.csv")
fig = plots.alpha_diagnostic(alphas, sorted(alphas.alpha.unique()), synthetic)
plots.save(fig, out / "alpha_diagnostic.png")
edge = st["scores"].groupby("condition").alpha_edge_fraction.mean().round(3)
edge.to_frame("share of alpha choices at a real grid edge")

# %% [markdown]
# ## Layer profile (when every layer was extracted: `layer_profile: true`)

# %% tags=["report"]
lp_path = run / "brain_score" / "layer_scores.csv"
if lp_path.exists():
    lp = compare.subject_scores(pd.read_csv(lp_path), keys=["layer"])
    write_csv(out / "layer_profile.csv", lp)
    for target in sorted(lp.target.unique()):
        fig = plots.layer_profile(lp[lp.target == target], synthetic)
        fig.axes[0].set_title(f"Layer profile: {target}{tag}", fontsize=10)
        plots.save(fig, out / f"layer_profile_{target}.png")
else:
    print("no layer profile in this run (layer_profile: false)")

# %% [markdown]
# ## Fine-tuning record

# %%
compare.sft_summary(run / "sft" / "models.csv")
