"""The powered design for response matrices: every story held out once, seeds and subjects in
the answer, checkpoints in order (lib.matrix_encoding with outer_folds, lib.deltas), on a
SYNTHETIC generic ROI dataset (planted word-rate ROIs, AR(0.9) noise)."""
import numpy as np
import pandas as pd
import pytest

from lib import datasets, deltas, matrix_encoding as me, stage05, transcripts
from lib.engine import Layout, story_group_folds

from test_datasets import make_generic_roi


def test_story_folds_hold_out_every_story_once_and_never_train_on_it():
    lens = [50, 40, 60, 30, 45, 55, 35]
    layout = Layout.of_runs(lens + lens[:2], [f"s{i}" for i in range(7)] + ["s0", "s1"])
    folds = story_group_folds(layout, 3)
    tested = np.concatenate([te for _, te in folds])
    assert np.array_equal(np.sort(tested), np.arange(len(layout)))       # each row once
    for tr, te in folds:
        assert not set(layout.story[tr]) & set(layout.story[te])          # whole stories
    assert len(folds) == 3


def _index(run, stories, conditions):
    """Fake activations: word rate and letters (what the planted ROIs follow) plus noise that
    differs by condition and seed, so every model predicts a little differently."""
    rows = []
    for cond, seed in conditions:
        rng = np.random.default_rng([seed, len(cond), sum(map(ord, cond))])
        for story in stories:
            words = transcripts.read_transcript(run / "transcripts" / f"{story}.tsv")
            letters = words.word.astype(str).str.len().to_numpy(float)
            acts = np.column_stack([np.ones(len(words)), letters,
                                    rng.standard_normal((len(words), 4))])
            p = run / "acts" / f"{cond}_{seed}_{story}.npz"
            p.parent.mkdir(parents=True, exist_ok=True)
            np.savez(p, activations=acts.astype(np.float32))
            rows.append(dict(condition=cond, story=story, seed=seed, model="fake",
                             model_tag="fake", fingerprint=f"{cond}{seed}", path=str(p),
                             all_layers_path="", leaky=False, cache_hit=False))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def powered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("powered")
    root = make_generic_roi(tmp / "roi", n_trs=(120, 110, 100, 130, 115), split=False)
    m = datasets.generic_manifest(root)
    run = tmp / "run"
    transcripts.build_transcripts(m, run / "transcripts")
    stories = sorted(m.story.unique())
    conditions = [("raw", 0), ("sft", 0), ("sft", 1), ("sft", 2), ("sft@2", 0), ("sft@8", 0),
                  ("control", 0), ("control", 1), ("control", 2), ("control@2", 0),
                  ("control@8", 0)]
    st = me.MatrixSettings(outer_folds=3, inner_groups=2, target_sets=(("planted", 2),
                                                                       ("all", 0)),
                           contrasts=(("sft", "raw"), ("sft", "control")), n_exchanges=200,
                           spaces=(), layer_conditions=())
    job = me.matrix_job(m, run / "transcripts", _index(run, stories, conditions),
                        run / "brain_score", st, run / "spaces")
    steps = {"sft@2": (2, 2 * 66), "sft": (5, 5 * 66), "sft@8": (8, 8 * 66),
             "control@2": (2, 2 * 66), "control": (5, 5 * 66), "control@8": (8, 8 * 66)}
    res = stage05.run_stage(job, progress=False, steps=steps)
    assert sorted(res["conditions"]) == sorted(conditions)
    return job, conditions, res, res, m


def test_every_story_is_held_out_and_scored(powered):
    job, conditions, res, tables, m = powered
    assert job.heldout().startswith("every story held out once")
    for sub in job.runs.subject.unique():
        a = me.load(job, "raw", 0, sub)
        n_kept = sum(int(r.n_trs) - int(r.trim_start) - int(r.trim_end)
                     for r in job.subject_runs(sub).itertuples())
        assert np.array_equal(np.sort(a["rows"]), np.arange(n_kept))     # each TR once
    s = res["scores"]
    planted = s[(s.condition == "raw") & (s.targets == "planted")]
    assert (planted.brain_score > planted.chance_score + 0.2).all()


def test_the_answer_averages_seeds_and_combines_subjects(powered):
    job, conditions, res, tables, m = powered
    a = tables["answer"]
    row = a[(a.contrast == "sft - raw") & (a.targets == "all")].set_index("subject")
    assert list(row.index) == ["S1", "S2", "combined"]
    assert (row.n_seeds == 3).all() and row.se_seed.notna().all()
    per_seed = res["deltas"][(res["deltas"].contrast == "sft - raw")
                             & (res["deltas"].targets == "all")]
    for sub in ("S1", "S2"):
        got = per_seed[per_seed.subject == sub].sort_values("seed").delta.to_numpy()
        assert row.loc[sub, "delta"] == pytest.approx(got.mean(), abs=1e-9)
        assert [float(v) for v in row.loc[sub, "seed_deltas"].split()] == \
            pytest.approx(got, abs=1e-5)
    assert row.loc["combined", "scope"].startswith("these 2 subjects")
    assert 0 <= row.loc["combined", "I2"] <= 1
    lo, hi = row[["delta"]].min().iloc[0], row[["delta"]].max().iloc[0]
    assert lo - 1e-12 <= row.loc["combined", "delta"] <= hi + 1e-12
    assert (row.mde > 0).all() and (row.ci_low < row.delta).all()


def test_checkpoints_are_scored_in_order_with_a_trend(powered):
    job, conditions, res, tables, m = powered
    d = tables["dose"]
    one = d[(d.subject == "S1") & (d.contrast == "sft - raw") & (d.targets == "all")]
    assert one.condition.tolist() == ["sft@2", "sft", "sft@8"]
    assert one.step.tolist() == [2, 5, 8] and one.tokens.is_monotonic_increasing
    vs = d[d.contrast == "sft - control"]
    assert set(vs.condition) == {"sft@2", "sft", "sft@8"}
    t = tables["trend"]
    assert set(t.contrast) == {"sft - raw", "control - raw", "sft - control"}
    assert (t.n_checkpoints == 3).all() and t.p.between(0, 1).all()
    # the headline checkpoint's Δ in the dose table is seed 0's Δ in the per-seed table
    per = res["deltas"]
    s0 = per[(per.subject == "S1") & (per.contrast == "sft - raw") & (per.seed == 0)
             & (per.targets == "all")].delta.iloc[0]
    assert one[one.condition == "sft"].delta.iloc[0] == pytest.approx(s0, abs=1e-9)
