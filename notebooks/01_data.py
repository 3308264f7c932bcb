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
# # 01 · Dataset subset and manifest
#
# Builds (or downloads) the dataset this run analyses and writes `data_manifest.csv`: one row per
# (subject, story, run) with the responses (a BOLD NIfTI, or a matrix of ROI / component series),
# their TRs and TR, the words (a Gentle alignment, a word table, or words per TR), the story's
# timing, its split, and whether the dataset authors exclude the scan. Dataset adapters
# (`lib/datasets`): Narratives BIDS (`mini` generates **narratives-mini**, real pieman stimuli with
# **synthetic BOLD**; `openneuro` downloads; `local`), `lebel` (real BOLD components of LeBel et
# al. 2023, shipped in `data/lebel`) and `generic` (a `runs.tsv` table, see the README).

# %% tags=["parameters"]
run_dir = "results/mini"
dataset = "mini"                  # mini (generate) | openneuro (download) | local | lebel | generic
bids_root = "data/narratives-mini"
bold_source = "raw"               # raw | afni-nosmooth | afni-smooth | fmriprep | fsaverage6 (surface)
subjects = ["sub-001", "sub-002", "sub-003", "sub-004", "sub-005"]   # or "all" (who heard the stories)
stories = ["pieman"]
include_excluded = False          # the dataset authors exclude sub-001's pieman runs
mini_seed = 0
mini_resolution_mm = 6
mini_runs = 1                     # hearings of pieman per subject in narratives-mini
mini_surface = None               # also write narratives-mini on a mesh: fsaverage5 | fsaverage6
tr = None                         # seconds; only where neither the data nor a sidecar gives it
max_train_stories = None          # lebel: keep the first N train stories (every test story stays)
trim_after_onset = 6              # TRs dropped after story onset (Narratives ISC convention)
tail_trs = 8                      # TRs kept after the last word (haemodynamic tail)
# openneuro_endpoint: None for the public OpenNeuro S3 bucket, or the URL of a mirror / test server
openneuro_endpoint = None
openneuro_bucket = "openneuro.org"
openneuro_prefix = "ds002345"
download_workers = 8              # files fetched in parallel
download_audio = False            # also fetch stimuli/<story>_audio.wav (audio_envelope space)

# %%
from pathlib import Path

from lib import data, datasets, synthetic

out = Path(run_dir) / "data"
if subjects == "all" and dataset in ("lebel", "generic"):
    subjects = None
elif subjects == "all":
    subjects = data.subjects_for(stories)
    print(f"{len(subjects)} subjects heard {', '.join(stories)} (before exclusions)")
if dataset == "mini":
    root = synthetic.make_mini(bids_root, seed=mini_seed, resolution_mm=mini_resolution_mm,
                               subjects=subjects, stories=stories, runs=mini_runs,
                               surface=mini_surface)
elif dataset == "openneuro":
    from lib import download

    plan = download.fetch_subset(bids_root, subjects=subjects, stories=stories,
                                 derivative=bold_source, endpoint_url=openneuro_endpoint,
                                 bucket=openneuro_bucket, prefix=openneuro_prefix,
                                 workers=download_workers, audio=download_audio)
    root = Path(bids_root)
else:
    root = Path(bids_root)

if dataset == "lebel":
    manifest = datasets.lebel_manifest(root, subjects, stories, tr, max_train_stories)
elif dataset == "generic":
    manifest = datasets.generic_manifest(root, subjects, stories, tr)
else:
    manifest = data.build_manifest(root, subjects=subjects, stories=stories,
                                   bold_source=bold_source, include_excluded=include_excluded,
                                   trim_after_onset=trim_after_onset, tail_trs=tail_trs)
data.write_manifest(manifest, out / "data_manifest.csv")
print(f"{len(manifest)} runs, {int((~manifest.excluded).sum())} used, TR "
      f"{', '.join(f'{t:g}' for t in sorted(manifest.tr.unique()))} s; "
      f"{'SYNTHETIC BOLD' if manifest.synthetic_bold.any() else 'real BOLD'} -> {out / 'data_manifest.csv'}")

# %% [markdown]
# ## Manifest

# %%
manifest.drop(columns=["bold_path", "alignment_path", "transcript_path", "words_path"])

# %% [markdown]
# ## Runs per subject and story (excluded scans stay listed, flagged)

# %%
data.summary(manifest)
