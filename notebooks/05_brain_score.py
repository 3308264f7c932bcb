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
# Ridge regression from delayed word features (sum per TR, FIR delays, zero-padded within each
# run) to every target, for every kind of target the manifest holds: BOLD **volumes** or
# **surfaces** (every voxel or vertex in the mask, the whole-brain mean and ROI means), or
# **response matrices** (ROI, parcel or component series). The kind decides how targets are
# read, which folds apply, and what the reduction writes (`lib.stage05`).
#
# **Volumes and surfaces.** Folds: leave one story out when a subject heard several; within one
# story, contiguous blocks of story time held out in every hearing at once, with a **gap** of
# `max(delays)` TRs + 37.5 s of story time dropped from training on each side (docs/validity.md).
# The penalty is chosen per target on blocked **inner folds** (same gap), each standardised on its
# own fit rows. **Brain score** = mean over folds of the per-fold Pearson r on held-out TRs, per
# run; **chance score** = the same with the features shifted in time by half the story. Group
# tests: block permutation of story time (45-s blocks, the same for every subject),
# Besag–Clifford sequential stopping, Benjamini–Hochberg FDR; with enough subjects a
# random-effects map (nilearn, TFCE). Noise ceiling: leave-one-subject-out ISC corrected by
# Spearman–Brown, and the repeat-based ceiling where a subject heard a story twice.
#
# **Response matrices.** Folds: `outer_folds` = k > 0 holds every story out once (k folds of whole
# stories); else the dataset's own split (fit on every training story, score the test stories),
# else leave one story out. The penalty is chosen per target on inner folds that hold out
# **groups of whole training stories**. **Brain score** = Pearson r of the held-out prediction per
# target and story, averaged over stories; the held-out predictions are kept, so two models are
# compared on the same TRs: Δ with a block CI and a block-exchange p per subject, then seeds
# averaged (their variance in the CI), subjects combined, the minimum detectable effect, the
# dose-response over fine-tuning checkpoints and Δ by layer (`lib.deltas`).

# %% tags=["parameters"]
run_dir = "results/mini"
targets = "auto"                  # auto (what the manifest holds) | volume | surface | matrix
# every kind
delays = [1, 2, 3, 4, 5]          # TRs
aggregation = "sum"               # sum | mean | lanczos
alphas = []                       # the ridge penalty grid; empty means logspace(-1, 8, 10)
chance = True                     # also fit time-mismatched features (the empirical chance level)
feature_spaces = ["word_rate"]    # spaces fitted alone beside the LMs (word_rate, phonemes, ...)
layer_profile_conditions = ["raw", "sft"]   # conditions whose every layer is scored
ridge_backend = "numpy"           # numpy | torch (CUDA when present, else CPU)
device = "auto"
threads = "auto"
cluster = "none"                  # none | local | slurm | tcp://host:port (see lib/cluster.py)
workers = 2
slurm = {}
# volumes and surfaces
n_folds = 5
inner_folds = 4
gap = None                        # TRs between training and test blocks; None: max(delays) + 37.5 s
n_perm = 1000                     # group permutations (block permutation of story time)
null_method = "block"             # block (of story time) | shift (circular, at least 30 TRs)
perm_block = None                 # TRs per permutation block; None: 45 s of story time
perm_conditions = ["raw", "sft"]
partition = []                    # e.g. [word_rate, lm:raw, lm:sft]: variance partitioning
partition_n_iter = 20             # band weightings tried by the banded ridge's random search
partition_null = []               # spaces whose unique R² is tested across subjects (sign flips)
fdr_q = 0.05
re_min_subjects = 6               # random-effects maps need at least this many subjects
mask = "auto"                     # a NIfTI path (a mask.npz on a surface), or auto
roi_labels = "auto"               # a labels NIfTI in the BOLD grid, auto (planted mask for mini), or None
roi_atlas = "harvard_oxford"      # named language ROIs from this atlas (or a labels image path; None)
roi_atlas_labels = None           # with an atlas path: its CSV (index,name)
roi_set = "language"              # language (lib/rois.py: IFG, TP, STG, MTG, AG, SMG; L and R) | all
roi_min_voxels = 5                # an ROI with fewer voxels on the BOLD grid is dropped (listed)
# response matrices
layer = 8                         # the headline layer (always in the layer profile)
inner_groups = 5                  # inner folds: groups of whole training stories
outer_folds = 0                   # k > 0: every story held out once (k folds of whole stories);
                                  # 0: the dataset's own train/test split (else leave one story out)
chance_conditions = []            # conditions that get a chance score (empty: every one)
layer_stride = 1                  # layer profile: every k-th layer (and the last)
# summaries: the mean r over the first k targets (0 = all)
target_sets = {"first10": 10, "all": 0}
n_exchanges = 10000               # block exchanges for each Δ's p-value and CI

# %%
from pathlib import Path

from IPython.display import display

from lib import cluster as cl, data, features, stage05
from lib.paths import Paths

n_threads = cl.use_threads(threads)
run = Path(run_dir)
manifest_csv = run / "data" / "data_manifest.csv"
manifest = data.read_manifest(manifest_csv)
index = features.read_index(run / "features" / "activations_index.csv")
kind = data.target_kind(manifest, targets, source=str(manifest_csv))
common = dict(delays=delays, aggregation=aggregation, alphas=alphas, chance=chance,
              feature_spaces=feature_spaces, layer_profile_conditions=layer_profile_conditions,
              ridge_backend=ridge_backend, device=device)
if kind == "matrix":
    from lib import deltas, matrix_encoding as me

    settings = me.MatrixSettings.from_params(
        **common, inner_groups=inner_groups, outer_folds=outer_folds,
        chance_conditions=chance_conditions, layer_stride=layer_stride, layer=layer,
        target_sets=target_sets, n_exchanges=n_exchanges)
    job = me.matrix_job(manifest, run / "transcripts", index, run / "brain_score", settings,
                        Paths.from_env().derived / "spaces")
    options = dict(steps=deltas.checkpoint_steps(run / "sft" / "models.csv"))
else:
    from lib import encoding, geometry
    from lib.job import Settings

    mask_img = geometry.brain_mask(manifest, mask)
    labels, roi_names, roi_table = geometry.named_rois(
        mask_img, geometry.roi_labels_for(manifest, roi_labels), roi_atlas, roi_atlas_labels,
        roi_set, roi_min_voxels)
    settings = Settings.from_params(
        **common, tr=data.single_tr(manifest), n_folds=n_folds, inner_folds=inner_folds, gap=gap,
        n_perm=n_perm, null_method=null_method, perm_block=perm_block,
        perm_conditions=perm_conditions, partition=partition, partition_n_iter=partition_n_iter,
        partition_null=partition_null)
    job = encoding.volume_job(manifest, run / "transcripts", index, run / "brain_score",
                              mask_img, settings, labels, roi_names)
    options = dict(fdr_q=fdr_q, re_min_subjects=re_min_subjects)
with cl.client_for(cluster, n_threads, dict(workers=workers, slurm=slurm)) as client:
    res = stage05.run_stage(job, client=client, **options)
print(stage05.summary_line(job, res))

# %% [markdown]
# ## Brain scores (chance level beside each score)
# Volumes and surfaces: the whole-brain mean and ROI targets per subject and run, then the mean
# voxel score per run. Response matrices: per subject, the mean r over each set of targets.

# %%
for table in stage05.score_views(job, res):
    display(table)

# %% [markdown]
# ## Layer profile (mean r over each set of targets; volumes: the summary targets)

# %%
stage05.layer_view(res)

# %% [markdown]
# ## Statistics
# Volumes and surfaces: group tests of the summary targets (block permutation, the same shuffles
# for every subject), the noise ceilings, variance partitioning, and the group map of each
# permuted condition, FDR-thresholded. Response matrices: Δ per subject and seed (held-out time is
# the unit), then the answer -- seeds averaged, subjects combined, the minimum detectable effect --
# and the dose-response over fine-tuning checkpoints.

# %%
for table in stage05.statistics_views(job, res):
    display(table)

# %%
if kind != "matrix":
    display(roi_table)
    stage05.group_maps(job, res, fdr_q)
