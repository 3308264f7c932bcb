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
# # 02 · Word alignments and transcripts
#
# Parses the Gentle alignments, interpolates the times of words Gentle did not find in the audio
# (linearly, between the found neighbours), assigns each word to the TR in which it starts
# (`floor((onset + audio_start) / TR)`), and writes `transcripts/<story>.tsv` plus the SFT corpus
# `train_narratives.txt` (every story with an alignment, one utterance per line; an index file gives
# each story's span so stage 04 can hold stories out). The text a model reads is the same when it is
# fine-tuned and when it is scored (`text_style`).

# %% tags=["parameters"]
run_dir = "results/mini"
corpus_from_committed = True      # add the 26 committed Narratives alignments to the SFT corpus
text_style = "words"              # words (as spoken, no punctuation) | punctuated (needs transcripts)
pause_s = 0.5                     # a pause this long starts a new utterance line in the corpus

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from lib import data, transcripts
from lib.paths import Paths

run = Path(run_dir)
manifest = data.read_manifest(run / "data" / "data_manifest.csv")
sources = [Paths.from_env().stimuli] if corpus_from_committed else []
res = transcripts.build_transcripts(manifest, run / "transcripts", corpus_sources=sources,
                                   text_style=text_style, pause_s=pause_s)
if res["skipped"]:
    print(f"left out of the SFT corpus (no transcript for text_style={text_style!r}): "
          f"{', '.join(res['skipped'])}")
res["stories"]

# %% [markdown]
# ## SFT corpus (stories and sizes)

# %%
print(f"{len(res['corpus'])} stories, {res['corpus'].n_words.sum()} words")
res["corpus"]

# %% [markdown]
# ## Words per TR

# %%
for story in res["stories"].story:
    words = transcripts.read_transcript(run / "transcripts" / f"{story}.tsv")
    n_trs = int(manifest.loc[manifest.story == story, "n_trs"].iloc[0])
    fig, ax = plt.subplots(figsize=(8, 2.2))
    ax.bar(np.arange(n_trs), np.bincount(words["tr"], minlength=n_trs), width=1.0)
    ax.set(xlabel="TR", ylabel="words", title=f"{story}: words per TR "
           f"({(~words.aligned).sum()} of {len(words)} times interpolated)")
    plt.show()
words.head(15)
