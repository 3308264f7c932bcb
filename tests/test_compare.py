"""Stage-06 summaries: aggregation within subject, model-neutral voxel selection, Δ statistics."""
import numpy as np
import pandas as pd
import pytest

from lib import compare


def _st(maps: dict, ceilings: dict, stories=(("pieman", 1),)):
    """A stage-05 result from per-subject maps {condition: {subject: map}} (synthetic)."""
    voxels, rows = {}, []
    for cond, by_sub in maps.items():
        for sub, m in by_sub.items():
            for story, run in stories:
                voxels[f"{sub}|{story}|{run}|{cond}|0"] = m
                voxels[f"{sub}|{story}|{run}|{cond}~chance|0"] = np.zeros_like(m)
                for target, v in (("voxels_mean", m.mean()), ("whole_brain_mean", m[:10].mean())):
                    rows.append(dict(subject=sub, story=story, run=run, condition=cond, seed=0,
                                     target=target, brain_score=v, chance_score=0.0,
                                     synthetic_bold=True))
    for sub, c in ceilings.items():
        voxels[f"{sub}|pieman|1|noise_ceiling|0"] = c
        voxels[f"{sub}|pieman|1|isc_reliable|0"] = (c > 0.3).astype(np.float32)
    return dict(scores=pd.DataFrame(rows), voxels=voxels, noise_ceiling=pd.DataFrame(), group={})


def _world(rng, n_sub=6, v=2000):
    ceiling = rng.uniform(0, 0.6, v)
    base = {f"sub-{i:02d}": (0.5 * ceiling + rng.normal(0, 0.03, v)).astype(np.float32)
            for i in range(n_sub)}
    ceil = {s: (ceiling + rng.normal(0, 0.05, v)).astype(np.float32) for s in base}
    return base, ceil


def test_identical_models_give_exactly_zero_delta():
    base, ceil = _world(np.random.default_rng(0))
    tab = compare.subject_table(_st({"raw": base, "sft": dict(base)}, ceil))
    deltas, stats = compare.contrast_table(tab)
    assert len(stats) and (deltas.delta == 0).all()
    assert (stats.mean_delta == 0).all() and (stats.n_improved == 0).all()
    for measure in compare.MEASURES:
        _, s = compare.contrast_table(tab, value=measure)
        assert (s.mean_delta.fillna(0) == 0).all()


@pytest.mark.parametrize("noisy", ["raw", "sft"])
def test_top_voxel_delta_has_no_systematic_sign(noisy):
    """One model = the other + a chance fit to the shared stimulus (the same noise map in every
    subject). Selecting voxels by the other subjects' noise ceiling leaves Δ unbiased in both
    orders; selecting by the raw model's map (the old rule) biases Δ(sft - raw) negative."""
    rng = np.random.default_rng(1)
    new, old = [], []
    for _ in range(20):
        base, ceil = _world(rng)
        eta = rng.normal(0, 0.02, 2000).astype(np.float32)
        noisy_maps = {s: m + eta for s, m in base.items()}
        maps = {"raw": noisy_maps, "sft": base} if noisy == "raw" else \
            {"raw": base, "sft": noisy_maps}
        tab = compare.subject_table(_st(maps, ceil))
        t = tab[tab.target == "voxels_top10pct"].pivot(index="subject", columns="condition",
                                                        values="brain_score")
        new.append((t.sft - t.raw).mean())
        crit = compare.others_ceiling(maps["raw"])         # the old, model-based selection
        a, b = compare.top_mean(crit, maps["sft"]), compare.top_mean(crit, maps["raw"])
        old.append(np.mean([a[s] - b[s] for s in a]))
    assert abs(np.mean(new)) < 0.002, np.mean(new)
    if noisy == "raw":
        assert np.mean(old) < -0.01                        # what raw-map selection did


def test_runs_averaged_within_story_then_stories_equally():
    rows = []
    for run, story, v in [(1, "pieman", 0.1), (2, "pieman", 0.3), (1, "tunnel", 0.6)]:
        rows.append(dict(subject="a", story=story, run=run, condition="raw", seed=0,
                         target="whole_brain_mean", brain_score=v))
    s = compare.subject_scores(pd.DataFrame(rows))
    assert s.brain_score.iloc[0] == pytest.approx((0.2 + 0.6) / 2)   # not (0.1+0.3+0.6)/3


def test_subject_maps_follow_the_same_rule():
    vox = {"a|pieman|1|raw|0": np.array([0.1]), "a|pieman|2|raw|0": np.array([0.3]),
           "a|tunnel|1|raw|0": np.array([0.6]), "a|pieman|1|raw|1": np.array([0.0]),
           "a|pieman|2|raw|1": np.array([0.0]), "a|tunnel|1|raw|1": np.array([0.0])}
    assert compare.subject_maps(vox, "raw")["a"][0] == pytest.approx(0.2)  # seeds averaged last


def test_selection_uses_only_other_subjects():
    ceil = {"s1": np.array([1.0, 0, 0, 0]), "s2": np.array([0, 1.0, 0, 0]),
            "s3": np.array([0, 1.0, 0, 0])}
    tgt = {k: np.array([10.0, 20.0, 30.0, 40.0]) for k in ceil}
    out = compare.top_mean(compare.others_ceiling(ceil), tgt, frac=0.25)
    assert out["s1"] == 20.0      # chosen by s2 + s3, not by s1's own peak at voxel 0


def test_voxel_delta_summary():
    d = {"a": np.array([0.1, -0.1, 0.2, np.nan]), "b": np.array([0.0, 0.1, 0.1, 0.1])}
    s = compare.voxel_delta_summary(d, np.array([True, True, False, False]))
    a = s.set_index("subject").loc["a"]
    assert a.n_voxels == 3 and a.n_improved == 2 and a.n_improved_reliable == 1


def test_delta_selection_uses_neither_models_map():
    base, ceil = _world(np.random.default_rng(4))
    st = _st({"raw": base, "sft": {s: m + 0.01 for s, m in base.items()}}, ceil)
    rel = compare.reliable_voxels(st["voxels"])
    st2 = _st({"raw": {s: m * 0 for s, m in base.items()}, "sft": base}, ceil)
    assert rel is not None and rel.any() and not rel.all()
    np.testing.assert_array_equal(rel, compare.reliable_voxels(st2["voxels"]))   # models irrelevant
    assert compare.reliable_voxels({}) is None


def test_headline_says_the_test_and_its_limit():
    base, ceil = _world(np.random.default_rng(3), n_sub=5)
    tab = compare.subject_table(_st({"raw": base, "sft": {s: m + 0.01 for s, m in
                                                          base.items()}}, ceil))
    _, stats = compare.contrast_table(tab)
    h = compare.headline(stats, synthetic=True)
    assert "5 of 5 subjects improved" in h and "sign-flip p = 0.0625" in h
    assert "smallest p possible with 5 subjects is 0.0625" in h and "SYNTHETIC" in h
    assert "One fine-tuning seed: the variance between trained models is not in this CI" in h


def test_brain_viewer_pages_are_identical_on_rerun(tmp_path):
    """nilearn names the viewer's elements with random ids; the saved page must not change
    between reruns of the same map (committed reports are compared byte for byte)."""
    import nibabel as nib

    from lib.plots import save_view_img

    data = np.zeros((9, 9, 9), np.float32)
    data[3:6, 3:6, 3:6] = 1.0
    img = nib.Nifti1Image(data, np.diag([4.0, 4.0, 4.0, 1.0]))
    a = save_view_img(img, tmp_path / "a.html", "map").read_text()
    b = save_view_img(img, tmp_path / "b.html", "map").read_text()
    assert a == b and 'rel="icon"' not in a
    assert "viewer-" in a


def _seeded_st(rng, n_sub=8, n_seeds=3, v=500, seed_shift=(0.0, 0.02, -0.01)):
    """raw (one seed) and sft (``n_seeds`` models, each with its own quirk ``seed_shift``)."""
    base, ceil = _world(rng, n_sub, v)
    st = _st({"raw": base}, ceil)
    rows, vox = [st["scores"]], dict(st["voxels"])
    for sd in range(n_seeds):
        for sub, m in base.items():
            mm = m + seed_shift[sd] + rng.normal(0, 0.002, v).astype(np.float32)
            vox[f"{sub}|pieman|1|sft|{sd}"] = mm
            vox[f"{sub}|pieman|1|sft~chance|{sd}"] = np.zeros_like(mm)
            rows.append(pd.DataFrame([dict(subject=sub, story="pieman", run=1, condition="sft",
                                           seed=sd, target=t, brain_score=val, chance_score=0.0,
                                           synthetic_bold=True)
                                      for t, val in (("voxels_mean", mm.mean()),
                                                     ("whole_brain_mean", mm[:10].mean()))]))
    return {**st, "scores": pd.concat(rows, ignore_index=True), "voxels": vox}


def test_seeds_enter_the_headline_as_a_crossed_random_effect():
    st = _seeded_st(np.random.default_rng(5))
    tab = compare.subject_table(st)
    _, stats = compare.contrast_table(tab)
    stats, seeds = compare.with_crossed(stats, st)
    assert set(seeds.seed) == {0, 1, 2} and (seeds[seeds.condition == "raw"].groupby(
        ["subject", "target"]).brain_score.nunique() == 1).all()      # raw: the same in every cell
    r = stats[(stats.contrast == "sft - raw") & (stats.target == "voxels_reliable")].iloc[0]
    assert r.n_seeds == 3 and abs(r.crossed_delta - r.mean_delta) < 1e-6
    # every subject improves on average (mean shift +0.0033), but the 3 models disagree: the
    # subjects-only test calls it, the crossed test does not
    assert r.p_sign_flip < 0.01 and r.crossed_p > 0.05 and r.crossed_ci_low < 0 < r.crossed_ci_high
    assert [float(x) for x in r.seed_deltas.split()] == pytest.approx([0.0, 0.02, -0.01], abs=2e-3)
    h = compare.headline(stats, synthetic=True)
    assert "3 fine-tuning seeds" in h and "crossed random effects" in h and "SYNTHETIC" in h


def test_voxels_are_normalised_only_where_the_ceiling_is_reliable_as_a_ratio_of_means():
    base, ceil = _world(np.random.default_rng(6))
    st = _st({"raw": base}, ceil)
    tab = compare.subject_table(st)
    norm = tab[tab.normalised_score.notna() & tab.target.str.startswith("voxels")]
    assert set(norm.target) == {"voxels_reliable"}          # voxels_mean is not normalised
    s = sorted(base)[0]
    sel = ceil[s] > 0.3                                       # the fixture's reliable voxels
    r = norm.set_index("subject").loc[s, "normalised_score"]
    assert r == pytest.approx(base[s][sel].mean() / ceil[s][sel].mean(), rel=1e-5)
    assert np.isnan(compare.ratio_of_means(base[s], ceil[s] * 0 + 0.05, sel))   # too low a ceiling


def test_ceiling_in_the_scoring_unit_of_single_story_subjects():
    """A subject who heard one story is scored by the mean r over blocks of story time; its
    ceiling must be in that unit. The true signal as a model, normalised (ratio of means over
    targets) by the block-unit ceiling, scores ~1; by the whole-run ceiling it scored 0.87-0.94
    (the between-block variance is in the ceiling, not in the score)."""
    from lib.engine.inference import ceiling_from_isc, zscore_time
    from lib.engine.ridge import Layout, blocked_folds
    from lib.reduction import unit_r
    from lib.synthetic import _ar1, realistic_noise

    blocks = [te for _, te in blocked_folds(Layout.single(300, "x"), 5, 30)]
    block, whole = [], []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        s = _ar1(rng, 300, 200, 0.95)
        Y = [zscore_time(0.5 * s + realistic_noise(rng, 300, 200)) for _ in range(5)]
        tot = sum(Y)
        perfect = np.mean([unit_r(y, s, blocks) for y in Y], 0)
        for unit, out in ((blocks, block), (None, whole)):
            c = ceiling_from_isc(np.mean([unit_r(y, (tot - y) / 4, unit) for y in Y], 0), 5)
            ok = np.isfinite(c)
            out.append(perfect[ok].mean() / c[ok].mean())
    assert abs(np.mean(block) - 1) < 0.03, np.mean(block)
    assert np.mean(whole) < 0.96, np.mean(whole)


def test_the_two_scoring_units_are_not_interchangeable():
    """Why the report states the mix of units: the same predictions of a model whose errors are
    less smooth than the signal score less per block of story time than over the whole run (the
    between-block variance of a smooth signal counts only in the whole-run r), and normalising
    each by its own unit's ceiling does not make them agree (docs/validity.md 4b)."""
    from lib.engine.inference import ceiling_from_isc, zscore_time
    from lib.engine.ridge import Layout, blocked_folds
    from lib.reduction import unit_r
    from lib.synthetic import _ar1, realistic_noise

    blocks = [te for _, te in blocked_folds(Layout.single(300, "x"), 5, 30)]
    raw, norm = {"blocks": [], "whole": []}, {"blocks": [], "whole": []}
    for seed in range(4):
        rng = np.random.default_rng(seed)
        s = _ar1(rng, 300, 200, 0.95)
        Y = [zscore_time(0.5 * s + realistic_noise(rng, 300, 200)) for _ in range(5)]
        tot = sum(Y)
        model = s + _ar1(rng, 300, 200, 0.5)
        for name, unit in (("blocks", blocks), ("whole", None)):
            c = ceiling_from_isc(np.mean([unit_r(y, (tot - y) / 4, unit) for y in Y], 0), 5)
            r = np.mean([unit_r(y, model, unit) for y in Y], 0)
            ok = np.isfinite(c)
            raw[name].append(r[ok].mean())
            norm[name].append(r[ok].mean() / c[ok].mean())
    assert np.mean(raw["blocks"]) < 0.85 * np.mean(raw["whole"]), raw
    assert np.mean(norm["blocks"]) < 0.92 * np.mean(norm["whole"]), norm


def test_report_states_the_mix_of_scoring_units():
    from lib.report import scoring_units

    sc = pd.DataFrame(dict(subject=["a", "a", "b", "c"],
                           fold_scheme=["5 contiguous blocks of story time, gap 30 TRs"] * 2 +
                           ["leave-one-story-out"] * 2))
    text = scoring_units(sc)
    assert text.startswith("1 subject(s): mean r over blocks") and "2 subject(s): r of" in text
    assert "mix the two units" in text
    assert "mix" not in scoring_units(sc[sc.subject == "a"])
    one = sc.assign(fold_scheme=sc.fold_scheme.replace(
        "leave-one-story-out", "leave-one-story-out, r per 5 blocks of each held-out story"))
    text = scoring_units(one)
    assert text.startswith("3 subject(s): mean r over blocks") and "one scoring unit" in text
    assert "mix" not in text


def _job(stories_of: dict, stimulus=None):
    from lib.job import Job, Settings

    runs = pd.DataFrame([dict(subject=s, story=st, run=1) for s, sts in stories_of.items()
                         for st in sts])
    return Job(settings=Settings(tr=1.5), runs=runs, transcripts_dir="", features={},
               all_layers={}, out_dir="", mask_path="", labels_path=None,
               stimulus=stimulus or {})


def test_one_scoring_unit_when_single_and_several_story_subjects_mix():
    """A run that mixes subjects who heard one story with subjects who heard several scores the
    latter's held-out stories per block (``n_folds`` blocks, cut as a single-story subject's
    folds), and their noise ceilings in the same blocks; runs without single-story subjects, or
    with only them, keep their units. Stories of one stimulus count once."""
    from lib.job import score_blocks_of
    from lib.reduction import score_blocks

    mixed = _job({"a": ["pieman"], "b": ["pieman", "tunnel"]})
    assert score_blocks_of(mixed, "b") == 5 and score_blocks_of(mixed, "a") == 0
    blocks = score_blocks(mixed, "b", 100)
    assert [(int(b[0]), int(b[-1])) for b in blocks] == [(0, 19), (20, 39), (40, 59), (60, 79),
                                                         (80, 99)]
    assert [b.tolist() for b in score_blocks(mixed, "a", 100)] == [b.tolist() for b in blocks]
    several = _job({"b": ["pieman", "tunnel"], "c": ["pieman", "lucy"]})
    assert score_blocks_of(several, "b") == 0 and score_blocks(several, "b", 100) is None
    same = _job({"a": ["pieman"], "b": ["pieman", "piemanpni"]},
                stimulus={"piemanpni": "pieman"})
    assert score_blocks_of(same, "b") == 0
