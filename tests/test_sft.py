import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from lib import sft
from lib.data import DataError
from lib.transcripts import read_alignment

from conftest import STIMULI


@pytest.fixture(scope="module")
def corpus():
    out = {}
    for s in ["pieman", "piemanpni", "tunnel", "black", "bronx", "lucy"]:
        out[s] = " ".join(read_alignment(STIMULI / s / "align.csv").word)
    return out


def test_heldout_story_never_in_training(corpus):
    folds = sft.plan_folds(["pieman", "tunnel"], corpus, "heldout")
    assert len(folds) == 2
    sft.check_no_leak(folds)
    for f in folds:
        for s in f["score_stories"]:
            assert s not in f["train_stories"]
            training_text = " ".join(corpus[t] for t in f["train_stories"])
            # no long verbatim stretch of the scored story is in its model's training text
            assert sft.overlap(corpus[s], training_text) < sft.OVERLAP_THRESHOLD
    pie = next(f for f in folds if f["score_stories"] == ["pieman"])
    assert "piemanpni" in pie["heldout"] and "piemanpni" not in pie["train_stories"]


def test_one_model_per_subject_story_set(corpus):
    heard = {"a": ["pieman", "tunnel"], "b": ["pieman"], "c": ["pieman"], "d": ["tunnel", "lucy"]}
    folds = sft.plan_folds(["lucy", "pieman", "tunnel"], corpus, "heldout", n_folds=2,
                           subject_stories=heard)
    sft.check_no_leak(folds)
    by_sub = {s: f for f in folds for s in f["subjects"]}
    assert sorted(by_sub) == ["a", "b", "c", "d"] and len(folds) == 3
    for sub, stories in heard.items():          # one model serves all of a subject's stories,
        f = by_sub[sub]                         # and it trained on none of them
        assert set(stories) == set(f["score_stories"]) and not set(stories) & set(f["train_stories"])
    assert "piemanpni" in by_sub["b"]["heldout"] and by_sub["b"]["subjects"] == ["b", "c"]
    with pytest.raises(DataError, match="external"):      # too little text left to train on
        sft.plan_folds(["pieman"], corpus, "heldout",
                       subject_stories={"e": ["pieman", "tunnel", "black", "bronx"]})
    with pytest.raises(AssertionError, match="two fold models"):
        sft.check_no_leak([dict(folds[0], subjects=["a"]), dict(folds[1], subjects=["a"])])


def _fit_delta(rng, mixed: bool, n=240, p=12, noise=0.2):
    """Δ(sft - raw) of one subject with two stories (leave one story out) when raw and the
    fine-tuned models are equally good: each model reads the shared signal through its own
    mixing of the feature dimensions (``Z (I + noise R_k)``: fold models correlated ~0.96).
    ``mixed``: each story's sft features from another fold model, as cross-fitting by story
    did."""
    from lib.engine import Layout, Splitter, fit_score
    from lib.synthetic import _ar1

    Z = _ar1(rng, 2 * n, p, 0.9)
    Y = Z @ rng.standard_normal((p, 4)) + 1.5 * rng.standard_normal((2 * n, 4))
    model = lambda: Z @ (np.eye(p) + noise / np.sqrt(p) * rng.standard_normal((p, p)))
    raw = model()
    sft_one = model()
    sft_mixed = np.vstack([model()[:n], model()[n:]])
    layout = Layout.of_runs([n, n], ["s1", "s2"])
    r = lambda X: fit_score(X, Y, layout, Splitter(gap=0, inner_folds=2)).scores.mean()
    return r(sft_mixed if mixed else sft_one) - r(raw)


def test_fold_models_mixed_in_one_fit_bias_delta_and_one_model_does_not():
    rng = np.random.default_rng(0)
    one = [_fit_delta(rng, False) for _ in range(200)]
    mixed = [_fit_delta(rng, True) for _ in range(200)]
    assert abs(np.mean(one)) < 0.001, np.mean(one)          # measured -0.0001 +- 0.00004
    assert np.mean(mixed) < -0.005, np.mean(mixed)          # before: -0.03 here


def test_leaky_mode_is_labelled(corpus):
    (f,) = sft.plan_folds(["pieman"], corpus, "leaky")
    assert f["leaky"] and "pieman" in f["train_stories"]
    with pytest.raises(ValueError):
        sft.plan_folds(["pieman"], corpus, "everything")


def test_control_text_keeps_the_words_and_follows_the_run_seed():
    t = "the cat sat on the mat\nthen it slept for a while happily\ndone and gone away now"
    c = sft.control_text(t, seed=1, story="a")
    assert Counter(c.split()) == Counter(t.split()) and c != t
    for line_c, line_t in zip(c.split("\n"), t.split("\n")):      # shuffled within utterances
        assert Counter(line_c.split()) == Counter(line_t.split())
    assert sft.control_text(t, seed=1, story="a") == c
    assert sft.control_text(t, seed=2, story="a") != c


def test_scrambled_control_keeps_utterances_and_mixes_stories():
    texts = {"a": "\n".join(f"a{i} x y" for i in range(30)),
             "b": "\n".join(f"b{i} x y" for i in range(30))}
    s1 = sft.scrambled_texts(texts, seed=0)["scrambled"].split("\n")
    assert sorted(s1) == sorted(texts["a"].split("\n") + texts["b"].split("\n"))
    assert s1[:30] != texts["a"].split("\n")                      # stories interleaved
    assert sft.scrambled_texts(texts, seed=1)["scrambled"].split("\n") != s1


def test_text_shorter_than_one_block(tiny):
    with pytest.raises(DataError, match="shorter than one block of 128"):
        sft.make_blocks(["just a few words"], tiny.tokenizer, 128, source="tiny.txt")


def test_sft_lowers_training_loss_and_resumes(corpus, tmp_path, paths):
    cfg = sft.SFTConfig(base_model="tiny-gpt2", steps=30, lr=3e-3, batch_size=4, block_size=32,
                        checkpoint_every=10, device="cpu")
    texts = {"black": corpus["black"][:6000]}
    m = sft.train(cfg, texts, tmp_path / "m", {"pieman": corpus["pieman"][:3000]},
                  progress=False)
    assert m["train_loss_last"] < m["train_loss_first"] - 0.5
    assert m["val_loss_after"] < m["val_loss_before"]
    meta = json.loads((tmp_path / "m" / "sft_config.json").read_text())
    assert meta["train_stories"] == ["black"] and meta["eval_stories"] == ["pieman"]
    # finished model with the same key: reused without training
    again = sft.train(cfg, texts, tmp_path / "m", {"pieman": corpus["pieman"][:3000]},
                      progress=False)
    assert again == m
    # an interrupted run resumes from its checkpoint
    cfg2 = sft.SFTConfig(**{**cfg.__dict__, "steps": 20})
    import torch

    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def failing_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    torch.optim.AdamW.step = failing_step
    try:
        with pytest.raises(KeyboardInterrupt):
            sft.train(cfg2, texts, tmp_path / "r", None, progress=False)
    finally:
        torch.optim.AdamW.step = real_step
    assert (tmp_path / "r" / "checkpoint" / "state.pt").exists()
    assert not (tmp_path / "r").joinpath("sft_config.json").exists()
    state = torch.load(tmp_path / "r" / "checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == 10
    m2 = sft.train(cfg2, texts, tmp_path / "r", None, progress=False)
    hist = (tmp_path / "r" / "train_history.csv").read_text().strip().splitlines()
    assert len(hist) == 21 and np.isfinite(m2["train_loss_last"])


def test_train_models_trains_sft_and_controls(corpus, tmp_path):
    cfg = sft.SFTConfig(base_model="tiny-gpt2", steps=3, lr=1e-3, batch_size=2, block_size=32,
                        device="cpu")
    small = {k: v[:3000] for k, v in corpus.items()}
    folds, table = sft.train_models(small, ["pieman"], cfg, tmp_path, mode="heldout",
                                 seeds=[0, 1], progress=False)
    assert sorted(table.condition.unique()) == ["control", "scrambled", "sft"] and len(table) == 6
    assert not table.leaky.any()
    assert all("pieman" not in t.split(",") for t in table.train_stories)


def test_runs_that_differ_keep_their_own_models(corpus, tmp_path):
    """Two profiles that train the same fold with different settings (steps, checkpoints) into
    one models folder never overwrite each other's models, and a rerun finds its own finished
    model, never a checkpoint of it."""
    from dataclasses import replace

    cfg = sft.SFTConfig(base_model="tiny-gpt2", steps=2, lr=1e-3, batch_size=2, block_size=32,
                        device="cpu")
    small = {k: v[:2000] for k, v in corpus.items()}
    run = lambda c, **kw: sft.train_models(small, ["pieman"], c, tmp_path, controls=[],
                                           progress=False, **kw)[1]
    long = run(cfg, checkpoints=[1])
    short = run(replace(cfg, steps=1))
    assert not set(long.path) & set(short.path)
    again = run(cfg, checkpoints=[1])
    assert again.path.tolist() == long.path.tolist()
    assert again.seconds.equals(long.seconds)          # reused, not retrained: the same record
    assert not any(p.count("_step") > 1 for p in again.path)


def test_leaky_models_are_labelled_and_kept_apart(corpus, tmp_path):
    """In leaky mode every model says so, and the control does not overwrite the SFT model."""
    cfg = sft.SFTConfig(base_model="tiny-gpt2", steps=2, lr=1e-3, batch_size=2, block_size=32,
                        device="cpu")
    small = {k: v[:2000] for k, v in corpus.items()}
    _, table = sft.train_models(small, ["pieman"], cfg, tmp_path, mode="leaky", progress=False)
    assert sorted(table.condition) == ["control-leaky", "scrambled-leaky", "sft-leaky"]
    assert table.leaky.all() and table.path.nunique() == 3


def test_training_and_extraction_are_bit_for_bit_reproducible(corpus, tmp_path, pieman_words):
    """Same inputs, same machine: identical weights, identical activations, identical scores."""
    import torch

    from lib import features
    from lib.engine import ridge
    from lib.models import load_model

    cfg = sft.SFTConfig(base_model="tiny-gpt2", steps=4, lr=1e-3, batch_size=2, block_size=32,
                        device="cpu")
    texts = {"black": corpus["black"][:3000]}
    for d in ("a", "b"):
        sft.train(cfg, texts, tmp_path / d, None, progress=False)
    wa = load_model(str(tmp_path / "a"), device="cpu").model.state_dict()
    wb = load_model(str(tmp_path / "b"), device="cpu").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    lm = load_model(str(tmp_path / "a"), device="cpu")
    words = pieman_words.text.tolist()[:200]
    a1 = features.windowed_activations(lm, words, 1, 32, progress=False)["activations"]
    a2 = features.windowed_activations(lm, words, 1, 32, progress=False)["activations"]
    assert np.array_equal(a1, a2)
    X = np.repeat(a1[:150], 2, axis=0)
    Y = np.random.default_rng(0).standard_normal((300, 50)).astype(np.float32)
    s1 = ridge.fit_score(X, Y, None, ridge.Splitter(gap=10)).scores
    s2 = ridge.fit_score(X, Y, None, ridge.Splitter(gap=10)).scores
    assert np.array_equal(s1, s2)
    # the fingerprint is the content (weights, tokenizer, training key), never the run metrics
    assert lm.fingerprint == load_model(str(tmp_path / "b"), device="cpu").fingerprint


def test_training_blocks_are_in_the_extraction_format(tiny, pieman_words):
    """Every block starts with the start token that begins every extraction window, and spans
    the extraction context: every position a feature is read at is a position SFT trains."""
    from lib import features

    context = 32
    blocks = sft.make_blocks([" ".join(pieman_words.text)], tiny.tokenizer, context)
    assert (blocks[:, 0] == features.start_token(tiny.tokenizer)).all()
    assert blocks.shape[1] == context + 1
    words = pieman_words.text.tolist()[:300]
    layers, ids, ends, starts_tok, starts, word_win, _ = features._plan(tiny, words, 1, context,
                                                                         None, "last")
    read = np.concatenate([np.arange(starts_tok[w] - word_win[w] + 1, ends[w] - word_win[w] + 1)
                           for w in range(len(words))])   # +1: after the start token
    assert set(read) <= set(sft.trained_positions(context)) and read.max() == context


def test_external_mode_trains_on_unscored_stories_only(corpus, tmp_path):
    """A dataset whose stories are not in the corpus: one fold, no scored story and no excluded
    story (nor its near-duplicate) in training; a model with the same training key is reused
    wherever an earlier run put it."""
    scored = {"storyA": "a b c d e f g h " * 50}
    full = {**corpus, **scored}
    (fold,) = sft.plan_folds(["storyA"], full, "external", exclude=["pieman"])
    assert fold["score_stories"] == ["storyA"] and not fold["leaky"]
    assert "storyA" not in fold["train_stories"] and "pieman" not in fold["train_stories"]
    assert "piemanpni" not in fold["train_stories"]                 # near-duplicate of pieman
    heldout = sft.plan_folds(["pieman"], corpus, "heldout")[0]
    assert heldout["train_stories"] == fold["train_stories"]      # the same training text
    cfg = sft.SFTConfig(base_model="tiny-gpt2", steps=2, lr=1e-3, batch_size=2, block_size=32,
                        device="cpu")
    small = {k: v[:2000] for k, v in corpus.items()}     # a Narratives run: its own corpus
    _, t1 = sft.train_models(small, ["pieman"], cfg, tmp_path, controls=(), progress=False)
    small["storyA"] = scored["storyA"]                   # another dataset: its story added
    _, t2 = sft.train_models(small, ["storyA"], cfg, tmp_path, mode="external", controls=(),
                          exclude=["pieman"], progress=False)
    assert t2.path.iloc[0] == t1.path.iloc[0]                     # trained once, used twice
    assert list(t2.columns) == sft.MODEL_COLUMNS


def test_precision_is_asked_resolved_recorded_and_keyed(corpus, tmp_path, monkeypatch):
    """fp32 and bf16 models never share a cache entry; each model records how it was trained;
    bf16 on a CPU without bf16 arithmetic is refused rather than emulated."""
    base = dict(base_model="tiny-gpt2", steps=2, lr=1e-3, batch_size=2, block_size=32,
                device="cpu")
    keys = {p: sft.SFTConfig(**base, precision=p).key("h", "sft") for p in sft.PRECISIONS}
    assert len(set(keys.values())) == 3
    with pytest.raises(ValueError, match="one of"):
        sft.precision("fp16", "cpu")
    monkeypatch.setattr(sft, "_cpu_has_bf16", lambda: False)
    assert sft.precision("auto", "cpu") == "fp32"
    with pytest.raises(ValueError, match="no bf16 arithmetic"):
        sft.precision("bf16", "cpu")
    monkeypatch.setattr(sft, "_cpu_has_bf16", lambda: True)
    assert sft.precision("auto", "cpu") == "bf16" and sft.precision("fp32", "cpu") == "fp32"
    texts = {"black": corpus["black"][:3000]}
    m = sft.train(sft.SFTConfig(**base, precision="bf16"), texts, tmp_path / "b", None,
                  progress=False)
    f = sft.train(sft.SFTConfig(**base, precision="fp32"), texts, tmp_path / "f", None,
                  progress=False)
    assert (m["precision"], f["precision"]) == ("bf16", "fp32")
    assert m["train_loss_first"] != f["train_loss_first"]   # bf16 products differ from fp32


def test_evaluation_is_fp32_whatever_the_training_precision(tiny, corpus, monkeypatch):
    """Losses are measurements: the same on a machine with bf16 arithmetic and one without."""
    blocks = sft.make_blocks([corpus["black"][:4000]], tiny.tokenizer, 32)[:4]
    monkeypatch.setattr(sft, "_cpu_has_bf16", lambda: False)
    a = sft.eval_loss(tiny, blocks)
    monkeypatch.setattr(sft, "_cpu_has_bf16", lambda: True)
    assert sft.eval_loss(tiny, blocks) == a


def test_the_report_says_how_the_models_were_trained():
    from lib import report

    models = pd.DataFrame(dict(condition=["sft", "control"], seed=[0, 0],
                               train_stories=["a,b", "a,b"], train_tokens_seen=[100, 100],
                               epochs=[0.5, 0.5], precision=["bf16", "bf16"]))
    text = report.sft_sentence(models)
    assert "bf16 mixed precision" in text and "one seed" in text
    assert "fp32" in report.sft_sentence(models.assign(precision="fp32"))
    assert "precision" not in report.sft_sentence(models.drop(columns="precision"))


def test_checkpoints_are_the_models_a_shorter_run_would_train(corpus, tmp_path):
    """One run to the last checkpoint saves the model after each earlier one; the snapshot after
    k steps is the model a k-step run trains (same weights, bit for bit), and the stage labels
    it ``sft@k`` except at the headline's number of steps."""
    import torch

    from lib.models import load_model
    from lib.paths import Paths

    cfg = sft.SFTConfig(base_model="tiny-gpt2", steps=3, lr=1e-3, batch_size=2, block_size=32,
                        device="cpu")
    small = {k: v[:3000] for k, v in corpus.items()}
    folds, table = sft.train_models(small, ["pieman"], cfg, tmp_path / "m", mode="heldout",
                                 controls=["control"], seeds=[0, 1], progress=False,
                                 checkpoints=[1, 5], checkpoint_seeds=[0])
    got = sorted(zip(table.condition, table.seed, table.step))
    assert got == [("control", 0, 3), ("control", 1, 3), ("control@1", 0, 1),
                   ("control@5", 0, 5), ("sft", 0, 3), ("sft", 1, 3), ("sft@1", 0, 1),
                   ("sft@5", 0, 5)]
    assert table.train_tokens_seen.tolist() == [s * 2 * 33 for s in table.step]
    assert table.val_ppl_after.notna().all()
    # seed 0's 3-step model is a snapshot of its 5-step run, equal to seed 1's kind of run
    short = sft.train(cfg, {s: small[s] for s in folds[0]["train_stories"]}, tmp_path / "short",
                      None, progress=False)
    assert short["train_tokens_seen"] == 3 * 2 * 33
    snap = table[(table.condition == "sft") & (table.seed == 0)].path.iloc[0]
    wa = load_model(str(tmp_path / "short"), device="cpu").model.state_dict()
    wb = load_model(str(Paths.from_env().resolve(snap)), device="cpu").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(ValueError, match="constant learning rate"):
        sft.unit_config(sft.SFTConfig(warmup_steps=2), 0, [1])
    assert sft.split_checkpoint("sft@24") == ("sft", 24) and sft.split_checkpoint("raw") == \
        ("raw", None)
