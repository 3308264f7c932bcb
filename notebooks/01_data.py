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
# Builds (or downloads) the BIDS tree this run analyses and writes `data_manifest.csv`: one row per
# (subject, story, run) with the BOLD file, its TRs, the Gentle alignment, the story's timing in scan
# time, and whether the dataset authors exclude the scan. The embedded default, **narratives-mini**,
# pairs the real pieman stimuli with **synthetic BOLD** (a planted signal in superior temporal voxels).

# %% tags=["parameters"]
run_dir = "results/mini"
dataset = "mini"                  # "mini" (generate), "openneuro" (download), "local" (already there)
bids_root = "data/narratives-mini"
bold_source = "raw"               # raw | afni-nosmooth | afni-smooth | fmriprep
subjects = ["sub-001", "sub-002", "sub-003", "sub-004", "sub-005"]   # or "all" (who heard the stories)
stories = ["pieman"]
include_excluded = False          # the dataset authors exclude sub-001's pieman runs
mini_seed = 0
mini_resolution_mm = 6
mini_runs = 1                     # hearings of pieman per subject in narratives-mini
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

from lib import data, synthetic

out = Path(run_dir) / "data"
if subjects == "all":
    subjects = data.subjects_for(stories)
    print(f"{len(subjects)} subjects heard {', '.join(stories)} (before exclusions)")
if dataset == "mini":
    root = synthetic.make_mini(bids_root, seed=mini_seed, resolution_mm=mini_resolution_mm,
                               subjects=subjects, stories=stories, runs=mini_runs)
elif dataset == "openneuro":
    from lib import download

    plan = download.fetch_subset(bids_root, subjects=subjects, stories=stories,
                                 derivative=bold_source, endpoint_url=openneuro_endpoint,
                                 bucket=openneuro_bucket, prefix=openneuro_prefix,
                                 workers=download_workers, audio=download_audio)
    root = Path(bids_root)
else:
    root = Path(bids_root)

manifest = data.build_manifest(root, subjects=subjects, stories=stories, bold_source=bold_source,
                               include_excluded=include_excluded,
                               trim_after_onset=trim_after_onset, tail_trs=tail_trs)
data.write_manifest(manifest, out / "data_manifest.csv")
print(f"{len(manifest)} runs, {int((~manifest.excluded).sum())} used; "
      f"{'SYNTHETIC BOLD' if manifest.synthetic_bold.any() else 'real BOLD'} -> {out / 'data_manifest.csv'}")

# %% [markdown]
# ## Manifest

# %%
manifest.drop(columns=["bold_path", "alignment_path", "transcript_path"])

# %% [markdown]
# ## Runs per subject and story (excluded scans stay listed, flagged)

# %%
data.summary(manifest)
