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
# Every table and figure of the comparison, written under `<run>/compare` (`lib.stage06`). The
# kind of target stage 05 fitted decides the unit of inference: for **volumes and surfaces** the
# subject (paired comparisons across subjects, voxel summaries that no model's map selects, ROIs,
# brain maps, variance partitioning); for **response matrices** with few subjects, held-out time
# within each subject (Δ with a block CI and a block-exchange p, seeds and subjects combined, the
# minimum detectable effect, the dose-response over fine-tuning checkpoints, Δ by layer).

# %% tags=["parameters"]
run_dir = "results/mini"
targets = "auto"                  # auto (what the manifest holds) | volume | surface | matrix
# response matrices
headline_targets = "first10"      # the set of targets the headline sentence uses
# volumes and surfaces
top_frac = 0.1                    # voxels_top10pct: this share of voxels by the others' ceiling
fdr_q = 0.05
min_ceiling = 0.1                 # normalised scores only where the ceiling is at least this

# %%
from pathlib import Path

from lib import data, stage06

run = Path(run_dir)
manifest_csv = run / "data" / "data_manifest.csv"
kind = data.target_kind(data.read_manifest(manifest_csv), targets, source=str(manifest_csv))
for section in stage06.sections(run, kind, headline_targets=headline_targets,
                                top_frac=top_frac, fdr_q=fdr_q, min_ceiling=min_ceiling):
    stage06.show(section)
