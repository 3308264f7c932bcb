import os
import time

import numpy as np
import pytest

from lib import features
from lib.data import DataError
from lib.models import ModelError, load_model


def test_tokenizer_is_real_gpt2_bpe(tiny):
    # GPT-2 ids: " Hello"=18435, " world"=995, ","=11, " reporter"=9095, "."=13
    assert tiny.tokenizer(" Hello world, reporter.")["input_ids"] == [18435, 995, 11, 9095, 13]
    assert len(tiny.tokenizer) == 50257


def test_split_clitics_tokenise_as_in_the_running_text(tiny, pieman_words):
    from lib.alignment import join_words

    words = ["I", "do", "n't", "know", "if", "it", "'s", "Gary", "\u2019s", "or", "talk", "'bout",
             "we", "'re", "I", "'m"]
    text = join_words(words)
    assert text == "I don't know if it's Gary\u2019s or talk 'bout we're I'm"
    ids, ends = features.tokenize_words(words, tiny.tokenizer)
    assert ids.tolist() == tiny.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ends[2] > ends[1] and len(ends) == len(words)   # "n't" keeps its own span
    # the real transcripts have no split-off clitics: their tokens (and caches) are unchanged
    plain = pieman_words.text.astype(str).tolist()
    assert features.tokenize_words(plain, tiny.tokenizer)[0].tolist() == tiny.tokenizer(
        " ".join(plain), add_special_tokens=False)["input_ids"]


def test_batched_tokenising_equals_word_by_word(tiny, pieman_words):
    """One batched tokenizer call gives each word the ids of its own call (with its leading
    space), so the spans and every cached activation are unchanged."""
    words = pieman_words.text.astype(str).tolist()
    ids, ends = features.tokenize_words(words, tiny.tokenizer)
    one_by_one = [tiny.tokenizer((" " if i else "") + w, add_special_tokens=False)["input_ids"]
                  for i, w in enumerate(words)]
    assert ids.tolist() == [t for w in one_by_one for t in w]
    assert ends.tolist() == np.cumsum([len(w) for w in one_by_one]).tolist()
    with pytest.raises(DataError, match="word 0"):
        features.tokenize_words(["", "a"], tiny.tokenizer)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_windowed_equals_naive(tiny, pieman_words, pooling):
    words = pieman_words.text.tolist()[:300]
    a = features.windowed_activations(tiny, words, layer="all", context=32, pooling=pooling,
                                      progress=False)
    b = features.naive_activations(tiny, words, layer="all", context=32, pooling=pooling)
    assert a["activations"].shape == (3, 300, 64)
    np.testing.assert_allclose(a["activations"], b["activations"], atol=1e-4)
    # each word saw between context - stride and context tokens (bar the start of the story)
    ids, ends = features.tokenize_words(words, tiny.tokenizer)
    ctx = ends - a["context_start"]
    assert ctx.max() <= 32 and ctx[ends > 32].min() >= 16


def test_windows_cover_every_token_once_as_owner():
    starts, owner = features.plan_windows(1000, 64, 32)
    assert starts[0] == 0 and np.all(np.diff(starts) == 32)
    j = np.arange(1000)
    assert np.all(owner <= j) and np.all(j - owner < 64)
    assert np.all(j[j >= 64] - owner[j >= 64] >= 32)


def test_every_window_starts_with_the_start_token(tiny, pieman_words, monkeypatch):
    """No word is read at position 0 (the attention sink): every sequence the model sees begins
    with <|endoftext|>, and the story's first word is read at position 1."""
    seen = []
    real = features._forward

    def spy(model, batch, layers, logits=False):
        seen.extend(batch)
        return real(model, batch, layers, logits)

    monkeypatch.setattr(features, "_forward", spy)
    words = pieman_words.text.tolist()[:120]
    a = features.windowed_activations(tiny, words, layer=1, context=32, progress=False)
    eot = tiny.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert features.start_token(tiny.tokenizer) == eot == 50256
    assert seen and all(int(b[0]) == eot for b in seen)
    ids = tiny.tokenizer(words[0], add_special_tokens=False)["input_ids"]
    h = real(tiny, [np.r_[eot, ids]], [1])[0][0, 0]
    np.testing.assert_allclose(a["activations"][0], h[len(ids)], atol=1e-5)


def test_cache_hit_computes_nothing(tiny, pieman_words, tmp_path, monkeypatch):
    tr = pieman_words.head(120)
    a, hit, _ = features.story_activations(tiny, tr, "pieman", tmp_path, layer=1, context=32)
    assert not hit
    monkeypatch.setattr(features, "windowed_activations",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    b, hit, _ = features.story_activations(tiny, tr, "pieman", tmp_path, layer=1, context=32)
    assert hit
    np.testing.assert_array_equal(a["activations"], b["activations"])


def test_corrupt_cache_entry_is_recomputed(tiny, pieman_words, tmp_path):
    tr = pieman_words.head(80)
    a, _, path = features.story_activations(tiny, tr, "pieman", tmp_path, layer=1, context=32)
    raw = bytearray(path.read_bytes())
    raw[-100:] = b"\0" * 100
    path.write_bytes(bytes(raw))
    b, hit, _ = features.story_activations(tiny, tr, "pieman", tmp_path, layer=1, context=32)
    assert not hit
    np.testing.assert_allclose(a["activations"], b["activations"], atol=1e-6)


def test_two_models_of_one_name_never_share_a_cache_file(tiny, pieman_words, tmp_path,
                                                          monkeypatch):
    """Other weights under the same tag (a model folder reused by another run) get a file of
    their own: computing them leaves the first model's entry fresh, so a later stage that reads
    the first model's file never gets the other model's activations."""
    from dataclasses import replace

    tr = pieman_words.head(60)
    other = replace(tiny, fingerprint="0" * 16)
    a, _, pa = features.story_activations(tiny, tr, "pieman", tmp_path, layer=1, context=32)
    _, _, pb = features.story_activations(other, tr, "pieman", tmp_path, layer=1, context=32)
    assert pa != pb and pa.parent.name.startswith(tiny.tag)
    monkeypatch.setattr(features, "windowed_activations",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    c, hit, _ = features.story_activations(tiny, tr, "pieman", tmp_path, layer=1, context=32)
    assert hit
    np.testing.assert_array_equal(a["activations"], c["activations"])


def test_cache_key_changes_with_words(tiny, pieman_words, tmp_path):
    features.story_activations(tiny, pieman_words.head(50), "pieman", tmp_path, layer=1, context=32)
    _, hit, _ = features.story_activations(tiny, pieman_words.head(51), "pieman", tmp_path,
                                           layer=1, context=32)
    assert not hit


def test_cache_never_mixes_numerics(paths, pieman_words, tmp_path, monkeypatch):
    """bf16 and fp32 activations of the same model never share a cache entry, nor do two
    library versions."""
    import copy
    import sys

    import torch

    from lib.models import load_model

    m32 = load_model("tiny-gpt2", device="cpu", paths=paths)
    m16 = copy.copy(m32)
    m16.model = copy.deepcopy(m32.model).to(torch.bfloat16)
    tr = pieman_words.head(40)
    _, hit32, p32 = features.story_activations(m32, tr, "pieman", tmp_path, layer=1, context=32)
    _, hit16, p16 = features.story_activations(m16, tr, "pieman", tmp_path, layer=1, context=32)
    assert not hit16 and p16 != p32 and "bfloat16-cpu" in p16.name and "float32-cpu" in p32.name
    assert features.story_activations(m32, tr, "pieman", tmp_path, layer=1, context=32)[1]
    # transformers swaps its own entry in sys.modules while loading: patch the live one
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "0.0.0-other")
    assert not features.story_activations(m32, tr, "pieman", tmp_path, layer=1, context=32)[1]


def test_bad_inputs(tiny, pieman_words):
    words = pieman_words.text.tolist()[:20]
    with pytest.raises(ModelError, match="layer 9 is out of range.*2 layers"):
        features.windowed_activations(tiny, words, layer=9, context=32, progress=False)
    with pytest.raises(ModelError, match=r"context of 1000 tokens \(\+1 start token\) exceeds .*256"):
        features.windowed_activations(tiny, words, layer=1, context=1000, progress=False)
    with pytest.raises(DataError, match="empty transcript"):
        features.windowed_activations(tiny, [], layer=1, context=32, progress=False)


def test_unknown_model_name():
    with pytest.raises(ModelError, match="unknown model 'no such model!'"):
        load_model("no such model!")


def test_hub_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(ModelError, match="hub is not reachable.*smollm2-135m"):
        load_model("gpt2")
    assert time.time() - t0 < 10


def test_random_baseline_differs_from_model(tiny, paths):
    rnd = load_model("random:tiny-gpt2", device="cpu", paths=paths)
    assert rnd.tag == "random-tiny-gpt2" and rnd.fingerprint != tiny.fingerprint
    a = next(tiny.model.parameters()).detach()
    b = next(rnd.model.parameters()).detach()
    assert a.shape == b.shape and not np.allclose(a.numpy(), b.numpy())


@pytest.mark.slow
def test_smollm2_loads_offline(paths, pieman_words):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    lm = load_model("smollm2-135m", device="cpu", paths=paths)
    assert lm.n_layers == 30 and lm.model.config.hidden_size == 576
    assert (paths.models / "smollm2-135m" / "model.safetensors").exists()
    ids = lm.tokenizer("The capital of France is", return_tensors="pt")
    out = lm.model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in lm.tokenizer.decode(out[0])
    acts = features.windowed_activations(lm, pieman_words.text.tolist()[:40], layer=8,
                                         context=64, progress=False)["activations"]
    assert acts.shape == (40, 576) and np.isfinite(acts).all()
    again = load_model("smollm2-135m", device="cpu", paths=paths)  # reuses the converted folder
    assert again.fingerprint == lm.fingerprint


def test_fused_gelu_changes_nothing_but_rounding(tiny, pieman_words):
    """The fused tanh-GELU that load_model swaps in computes GPT-2's gelu_new: same activations."""
    import copy

    from transformers.activations import GELUTanh, NewGELUActivation

    assert tiny.info["fused_gelu"] == 2  # one per block of the 2-layer test model
    plain = copy.copy(tiny)
    plain.model = copy.deepcopy(tiny.model)
    for name, mod in list(plain.model.named_modules()):
        if isinstance(mod, GELUTanh):
            parent, _, attr = name.rpartition(".")
            setattr(plain.model.get_submodule(parent), attr, NewGELUActivation())
    assert not any(isinstance(m, GELUTanh) for m in plain.model.modules())
    words = pieman_words.text.tolist()[:80]
    a = features.windowed_activations(tiny, words, layer="all", context=32, progress=False)
    b = features.windowed_activations(plain, words, layer="all", context=32, progress=False)
    np.testing.assert_allclose(a["activations"], b["activations"], atol=1e-5)


def test_cpu_bf16_is_close_and_cached_apart(paths, pieman_words, tmp_path):
    m32 = load_model("tiny-gpt2", device="cpu", paths=paths)
    m16 = load_model("tiny-gpt2", device="cpu", paths=paths, cpu_bf16=True)
    assert m16.info["cpu_bf16"] and not m32.info["cpu_bf16"]
    tr = pieman_words.head(60)
    a32, _, p32 = features.story_activations(m32, tr, "pieman", tmp_path, layer=2, context=32)
    a16, hit, p16 = features.story_activations(m16, tr, "pieman", tmp_path, layer=2, context=32)
    assert not hit and "float32+bf16-cpu" in p16.name and p16 != p32
    x32, x16 = a32["activations"], a16["activations"]
    assert x16.dtype == x32.dtype == np.float32
    assert not np.array_equal(x16, x32)            # autocast really ran in bf16
    assert np.abs(x16 - x32).max() <= 0.05 * np.abs(x32).max()


def test_feature_maps_give_each_subject_its_own_fold_model():
    import pandas as pd

    rows = [dict(condition="raw", story="pieman", seed=0, path="raw.npz", model_tag="m",
                 fold="", subjects=""),
            dict(condition="sft", story="pieman", seed=0, path="A.npz", model_tag="a",
                 fold="set-pieman", subjects="s1,s2"),
            dict(condition="sft", story="pieman", seed=0, path="B.npz", model_tag="b",
                 fold="set-pieman-tunnel", subjects="s3"),
            dict(condition="sft", story="tunnel", seed=0, path="Bt.npz", model_tag="b",
                 fold="set-pieman-tunnel", subjects="s3")]
    fm = features.FeatureMaps.of(pd.DataFrame(rows))
    sft = fm.features[("sft", 0)]
    fold = fm.subject_fold
    assert features.story_path(sft, "pieman", fold["s1"]) == "A.npz"
    assert features.story_path(sft, "pieman", fold["s3"]) == "B.npz"
    assert features.story_path(sft, "tunnel", fold["s3"]) == "Bt.npz"
    assert features.story_path(fm.features[("raw", 0)], "pieman", fold["s3"]) == "raw.npz"
    bad = pd.DataFrame(rows + [dict(rows[1], fold="set-other", subjects="s1")])
    with pytest.raises(DataError, match="two fold models"):
        features.FeatureMaps.of(bad)


def test_the_config_only_architecture_is_the_real_models(paths, monkeypatch):
    """random:smollm2-135m without the GGUF (a GPU machine that cannot receive it) has the
    converted model's architecture and tokenizer, and the same random weights."""
    import torch

    from lib import models

    real = models.load_model("random:smollm2-135m", device="cpu", paths=paths)
    monkeypatch.setattr(models, "_has_weights", lambda name: False)
    bare = models.load_model("random:smollm2-135m", device="cpu", paths=paths)
    keep = lambda c: {k: v for k, v in c.to_dict().items()
                      if k not in ("_name_or_path", "_model_name_or_path", "transformers_version")}
    assert keep(bare.model.config) == keep(real.model.config)
    assert bare.tokenizer.get_vocab() == real.tokenizer.get_vocab()
    assert bare.tokenizer(models.PROBE)["input_ids"] == real.tokenizer(models.PROBE)["input_ids"]
    wa, wb = real.model.state_dict(), bare.model.state_dict()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert bare.fingerprint != real.fingerprint        # cached apart: another source


def test_training_is_set_deterministic(monkeypatch):
    import os

    import torch

    from lib import sft

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled()
    with sft.deterministic("cuda"):
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    with sft.deterministic("cpu"):
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before     # settings restored
    import contextlib
    assert isinstance(sft.deterministic_attention("cpu"), contextlib.nullcontext)
    assert not isinstance(sft.deterministic_attention("cuda"), contextlib.nullcontext)
