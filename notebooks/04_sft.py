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
# # 04 · Fine-tuning (SFT) without leakage
#
# Causal-LM fine-tuning on Narratives text. **Story-held-out** by default: the model that scores a
# story never saw it (nor a near-duplicate such as `piemanpni` for `pieman`). Two controls get the
# same budget, seeded with the run's seed: **control** (words shuffled within each utterance: no
# syntax) and **scrambled** (utterances shuffled across all training stories: grammar kept,
# narrative gone). `sft_mode = "leaky"` trains on every story, scored ones included, and every model
# of such a run is labelled `-leaky`. The fine-tuned models' activations are extracted here with
# the same settings as stage 03.

# %% tags=["parameters"]
run_dir = "results/mini"
model = "smollm2-135m"
layer = 8
context_tokens = 256
pooling = "last"
batch_size = 8
sft_mode = "heldout"              # heldout | leaky | external (corpus stories only, none scored)
sft_exclude = []                  # corpus stories (and their near-duplicates) never trained on
sft_controls = ["control", "scrambled"]   # word-shuffled and utterance-scrambled controls
sft_steps = 24
sft_lr = 5e-5
sft_batch_size = 2
sft_block_size = 128
sft_seeds = [0]
sft_checkpoints = []              # steps at which the model is also saved and scored (dose-response)
sft_checkpoint_seeds = []         # seeds trained to the last checkpoint (empty: every seed)
sft_method = "full"               # full | lora
sft_precision = "auto"            # fp32 | bf16 | auto: bf16 mixed precision where the hardware
                                  # has it (recorded per model); fp32 trains the same model anywhere
layer_profile = False
layer_profile_conditions = ["raw", "sft"]   # whose every layer is cached when layer_profile
layer_profile_seeds = []          # ... for these seeds of the fine-tuned models (empty: every seed)
surprisal = False
device = "auto"
cpu_bf16 = False                  # bfloat16 autocast for extraction on a CPU (faster, ~1% off)
threads = "auto"
cluster = "none"                  # none | local | slurm | tcp://host:port (see lib/cluster.py)
workers = 2
slurm = {}

# %%
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from IPython.display import display

from lib import cluster as cl, data, features, sft
from lib.cache import write_csv, write_json
from lib.paths import Paths
from lib.transcripts import read_corpus

cl.use_threads(threads)
run = Path(run_dir)
paths = Paths.from_env()
manifest = data.read_manifest(run / "data" / "data_manifest.csv")
used = manifest[~manifest.excluded]
scored = sorted(used.story.unique())
# heldout: one model per set of stories that subjects heard, so that every subject's fit uses one
# model that never saw any of that subject's stories
subject_stories = {s: sorted(g.story.unique()) for s, g in used.groupby("subject")}
corpus = read_corpus(run / "transcripts" / "train_narratives.txt")
if sft_block_size < context_tokens:
    print(f"WARNING: sft_block_size {sft_block_size} < context_tokens {context_tokens}: features "
          f"read at positions {sft_block_size + 1}..{context_tokens} were never trained")
cfg = sft.SFTConfig(base_model=model, steps=sft_steps, lr=sft_lr, batch_size=sft_batch_size,
                    block_size=sft_block_size, method=sft_method, precision=sft_precision,
                    device=None if device == "auto" else device)
with cl.client_for(cluster, threads, dict(workers=workers, slurm=slurm)) as client:
    folds, trained = sft.train_models(corpus, scored, cfg, paths.models, mode=sft_mode,
                                   controls=sft_controls, seeds=sft_seeds, client=client,
                                   exclude=sft_exclude, subject_stories=subject_stories,
                                   checkpoints=sft_checkpoints,
                                   checkpoint_seeds=sft_checkpoint_seeds or None)
write_csv(run / "sft" / "models.csv", trained)
write_json(run / "sft" / "folds.json", {"mode": sft_mode, "config": asdict(cfg), "folds": folds})
pd.DataFrame(folds)[["fold", "score_stories", "subjects", "heldout", "leaky"]]

# %% [markdown]
# ## Training record: tokens seen, epochs, loss and held-out perplexity before → after
#
# `precision` says how each model was trained (fp32, or bf16 mixed precision where the hardware has
# it: `sft_precision = "auto"`). Losses and perplexities are measured in fp32 on every machine.
#
# With `sft_mode = "external"` the validation text is the start of the corpus's held-out stories;
# the perplexity on the scored stories (the dataset's own text) follows below.

# %%
print(f"{trained.train_tokens_seen.iloc[0]} tokens seen per model = "
      f"{trained.epochs.iloc[0]:.2f} epochs of its training text; seeds {sorted(set(trained.seed))}")
trained[["condition", "fold", "seed", "step", "train_tokens_seen", "epochs", "train_loss_first",
         "train_loss_last", "val_ppl_before", "val_ppl_after", "seconds", "device", "precision"]]

# %%
if sft_mode == "external":
    test = sorted(manifest.loc[manifest.split == "test", "story"].unique()) or scored
    ppl = sft.perplexity_table([model] + trained.path.tolist(),
                               ["raw"] + trained.condition.tolist(),
                               {s: corpus[s] for s in test}, block_size=sft_block_size,
                               device=None if device == "auto" else device)
    for i, col in enumerate(["seed", "step", "train_tokens_seen", "epochs"], 1):
        ppl.insert(i, col, [0] + trained[col].tolist())
    write_csv(run / "sft" / "perplexity.csv", ppl)
    display(ppl)

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 3))
for r in trained.itertuples():
    h = pd.read_csv(Path(r.path) / "train_history.csv")
    ax.plot(h.step, h.train_loss.rolling(5, min_periods=1).mean(),
            label=f"{r.condition} {r.fold} s{r.seed}")
ax.set(xlabel="step", ylabel="train loss (5-step mean)", title="SFT training loss")
ax.legend(frameon=False, fontsize=7)
plt.show()

# %% [markdown]
# ## Activations of the fine-tuned models (same settings as stage 03)

# %%
kw = dict(layer=layer, context=context_tokens, pooling=pooling, batch_size=batch_size,
          surprisal=surprisal)
units = [features.ExtractUnit(r.path, r.condition, tuple(r.score_stories.split(",")),
                              str(run / "transcripts"), str(paths.activations), seed=r.seed,
                              leaky=bool(r.leaky), device=device, cpu_bf16=cpu_bf16,
                              fold=r.fold, subjects=tuple(filter(None, r.subjects.split(","))),
                              options=tuple({**kw, "all_layers": layer_profile and r.condition
                                             in layer_profile_conditions and (
                                                 not layer_profile_seeds
                                                 or r.seed in layer_profile_seeds)}.items()))
         for r in trained.itertuples()]
with cl.client_for(cluster, threads, dict(workers=workers, slurm=slurm)) as client:
    tuned = features.run_extraction(units, client)
base = features.read_index(run / "features" / "base_index.csv")    # stage 03's models
index = pd.concat([base, tuned], ignore_index=True)
write_csv(run / "features" / "activations_index.csv", index)
index
