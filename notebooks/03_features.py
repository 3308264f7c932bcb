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
# # 03 · Language-model activations
#
# Hidden states of one layer for every word, from overlapping windows of `context_tokens` tokens
# (each word sees between half and all of them as left context; every window starts with the
# model's `<|endoftext|>` token, so no word is read at the attention-sink position 0), pooled over
# the word's sub-word tokens. Cached under `<cache>/derived/activations/<model_tag>-<fingerprint>/`
# (`<cache>` = `~/.cache/narratives-sft`, or `$NARRATIVES_CACHE`) keyed by model fingerprint,
# layer, context, pooling, the words, dtype, device and library versions. Baseline: the same
# architecture with random weights.

# %% tags=["parameters"]
run_dir = "results/mini"
model = "smollm2-135m"            # "gpt2" for real runs; "tiny-gpt2" in tests
layer = 8
context_tokens = 256
pooling = "last"                  # last | mean
batch_size = 8
baselines = ["random"]            # random-init model of the same architecture
layer_profile = False             # also cache every layer (stage 05 then scores each layer)
layer_profile_conditions = ["raw", "sft"]   # whose every layer is cached when layer_profile
surprisal = False                 # also each word's surprisal under every LM (same pass)
feature_spaces = ["word_rate"]    # word-level spaces to compute and cache (see lib/spaces.py)
device = "auto"
cpu_bf16 = False                  # bfloat16 autocast for extraction on a CPU (faster, ~1% off)
threads = "auto"                  # one thread count for every pool; auto: CPUs not busy elsewhere
cluster = "none"                  # none | local | slurm | tcp://host:port (see lib/cluster.py)
workers = 2
slurm = {}

# %%
from pathlib import Path

import numpy as np
import pandas as pd
from lib import cluster as cl, data, features, transcripts
from lib.cache import write_csv
from lib.models import load_model
from lib.paths import Paths

cl.use_threads(threads)
run = Path(run_dir)
manifest = data.read_manifest(run / "data" / "data_manifest.csv")
stories = sorted(manifest.loc[~manifest.excluded, "story"].unique())
cache = Paths.from_env().activations
kw = dict(layer=layer, context=context_tokens, pooling=pooling, batch_size=batch_size,
          surprisal=surprisal)

lm = load_model(model, device=device)
print(f"{lm.name}: {lm.n_layers} layers, fingerprint {lm.fingerprint}, on {lm.device} ({lm.info})")
model_tag = lm.tag
del lm
unknown = set(baselines) - {"random"}
if unknown:
    raise ValueError(f"unknown baselines {sorted(unknown)}: the one baseline is 'random'")
units = [features.ExtractUnit(name, cond, (story,), str(run / "transcripts"), str(cache),
                              device=device, cpu_bf16=cpu_bf16,
                              options=tuple({**kw, "all_layers": layer_profile and cond
                                             in layer_profile_conditions}.items()))
         for name, cond in [(model, "raw")] + [(f"random:{model}", "random")] * len(baselines)
         for story in stories]
with cl.client_for(cluster, threads, dict(workers=workers, slurm=slurm)) as client:
    index = features.run_extraction(units, client)
write_csv(run / "features" / "base_index.csv", index)           # stage 04 adds its models to it
write_csv(run / "features" / "activations_index.csv", index)
index

# %% [markdown]
# ## Word-level feature spaces (cached; what the lexicons do not know is counted, not guessed)

# %%
from lib import spaces

space_rows = []
for story in stories:
    words = transcripts.read_transcript(run / "transcripts" / f"{story}.tsv")
    for space in feature_spaces:
        if space in spaces.LOW_LEVEL:
            values, info = spaces.cached_word_values(space, words, story, cache.parent / "spaces")
            space_rows.append(dict(space=space, story=story, n_words=len(words),
                                   dims=values.shape[1], **{k: v for k, v in info.items()
                                                            if k != "examples"},
                                   examples=", ".join(info.get("examples", []))))
space_table = pd.DataFrame(space_rows)
write_csv(run / "features" / "spaces.csv", space_table)
space_table

# %% [markdown]
# ## A look at the activations (first story)

# %%
import matplotlib.pyplot as plt

acts = features.load_activations(index.path.iloc[0])
acts2d = acts if acts.ndim == 2 else acts[min(8, len(acts) - 1)]
fig, ax = plt.subplots(figsize=(8, 2.5))
ax.imshow(acts2d[:200].T, aspect="auto", cmap="RdBu_r",
          vmin=-np.percentile(np.abs(acts2d), 99), vmax=np.percentile(np.abs(acts2d), 99))
ax.set(xlabel="word", ylabel="unit", title=f"{index.story.iloc[0]}: layer {layer} activations, "
       f"first 200 words ({model_tag})")
plt.show()
