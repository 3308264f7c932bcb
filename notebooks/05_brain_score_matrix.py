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
# # 05 · Encoding models and brain scores (response matrices)
#
# For datasets whose responses are matrices of ROI, parcel or component series (the LeBel
# components, a generic ROI dataset). Ridge regression from delayed word features (sum per TR, FIR
# delays) to every target. **Folds**: the dataset's own split when it has one -- fit on every
# training story, score the test stories -- else leave one story out. The penalty is chosen per
# target on inner folds that hold out **groups of whole training stories**, each standardised on
# its own fit rows. **Brain score** = Pearson r of the held-out prediction per target and test
# story, averaged over stories; **chance score** = the same with the features shifted in time by
# half of each story. The held-out predictions are kept, so stage 06 compares two models on the
# same TRs (Δ with a block CI and a block-exchange permutation p, per subject).

# %% tags=["parameters"]
run_dir = "results/lebel"
layer = 8                         # the headline layer (always in the layer profile)
delays = [1, 2, 3, 4]
aggregation = "sum"               # sum | mean (lanczos needs word onsets)
alphas = []                       # the ridge penalty grid; empty means logspace(-1, 8, 10)
inner_groups = 5                  # inner folds: groups of whole training stories
outer_folds = 0                   # k > 0: every story held out once (k folds of whole stories);
                                  # 0: the dataset's own train/test split (else leave one story out)
chance = True
chance_conditions = []            # conditions that get a chance score (empty: every one)
layer_profile_conditions = ["raw", "sft"]
layer_stride = 1                  # layer profile: every k-th layer (and the last)
feature_spaces = ["word_rate"]
# summaries: the mean r over the first k targets (0 = all)
target_sets = {"first10": 10, "all": 0}
n_perm = 10000                    # block exchanges for each Δ's p-value
ridge_backend = "numpy"
device = "auto"
threads = "auto"
cluster = "none"
workers = 2
slurm = {}

# %%
from pathlib import Path

from lib import cluster as cl, data, features, matrix_encoding as me
from lib.paths import Paths
from lib.engine.ridge import DEFAULT_ALPHAS

n_threads = cl.use_threads(threads)
run = Path(run_dir)
manifest = data.read_manifest(run / "data" / "data_manifest.csv")
index = features.read_index(run / "features" / "activations_index.csv")
settings = me.MatrixSettings(
    delays=tuple(delays), aggregation=aggregation,
    alphas=tuple(alphas) if len(alphas) else tuple(DEFAULT_ALPHAS), inner_groups=inner_groups,
    outer_folds=outer_folds, chance=chance, chance_conditions=tuple(chance_conditions), spaces=tuple(feature_spaces), layer_stride=layer_stride, layer=layer,
    layer_conditions=tuple(layer_profile_conditions), target_sets=tuple(target_sets.items()),
    n_perm=n_perm, backend=ridge_backend, device=None if device == "auto" else device)
job = me.make_job(manifest, run / "transcripts", index, run / "brain_score", settings,
                  Paths.from_env().derived / "spaces")
conditions = sorted({(r.condition, int(r.seed)) for r in index.itertuples()}) + \
    [(s, 0) for s in feature_spaces]
with cl.client_for(cluster, n_threads, dict(workers=workers, slurm=slurm)) as client:
    res = me.run_stage(job, conditions, client=client)
tests = job.test_stories()
print(f"{manifest.subject.nunique()} subjects, {manifest.story.nunique()} stories, "
      f"{len(res['component_scores'].target.unique())} targets; folds: "
      + (f"train on {manifest.loc[manifest.split == 'train', 'story'].nunique()} stories, "
         f"test on {', '.join(tests)}" if tests else job.heldout())
      + f"; {'SYNTHETIC' if manifest.synthetic_bold.any() else 'real'} responses")

# %% [markdown]
# ## Brain scores per subject (mean r over each set of targets; chance level beside it)

# %%
res["scores"].pivot_table(index=["targets", "condition"], columns="subject",
                          values=["brain_score", "chance_score"]).round(4)

# %% [markdown]
# ## Layer profile (mean r over each set of targets)

# %%
lay = res["layer_scores"]
lay.pivot_table(index="layer", columns=["targets", "condition", "subject"],
                values="brain_score").round(4) if len(lay) else "no layer profile in this run"

# %% [markdown]
# ## Δ per subject and seed (held-out time is the unit: block CI and block-exchange permutation p)

# %%
res["deltas"].round(5)

# %% [markdown]
# ## The answer: seeds averaged (their variance in the CI), subjects combined, minimum detectable
# effect; the dose-response over fine-tuning checkpoints; Δ by layer

# %%
from lib import deltas as dl

models = run / "sft" / "models.csv"
steps = {}
if models.exists():
    import pandas as pd

    m = pd.read_csv(models)
    steps = {c: (int(g.step.iloc[0]), int(g.train_tokens_seen.iloc[0]))
             for c, g in m.groupby("condition")} if "step" in m else {}
tables = dl.write_tables(job, conditions, steps)
tables["answer"].round(5)

# %%
tables.get("dose", "no fine-tuning checkpoints in this run")
