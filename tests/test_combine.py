"""Δ over fine-tuning seeds, over subjects and along checkpoints (lib.engine.combine), on
SYNTHETIC responses as smooth as BOLD (AR(0.9)): definitions, and calibration on simulated seeds
whose models differ in quality."""
import numpy as np
import pytest
from scipy import stats

from lib.engine import combine, paired, simulate


def _terms(y, preds_a, pb, seg, k):
    ds = np.asarray([paired.fit_difference(y, p, pb, seg, np.arange(k)) for p in preds_a])
    L = paired.choose_unit(ds.mean(0), seg)
    terms = [paired.block_contributions(d, seg, L) for d in ds]
    return np.asarray([t[0] for t in terms]), terms[0][1], terms[0][2]


def test_seed_interval_adds_the_between_seed_variance_to_the_time_variance():
    rng = np.random.default_rng(0)
    y, sig, seg = simulate.responses(rng, simulate.TEST_LENS, 10)
    pa, pb = simulate.seeded_models(rng, sig, simulate.TEST_LENS, 0.9, 3, 0.05)
    c, w, sg = _terms(y, pa, pb, seg, 10)
    r = combine.seed_interval(c, w, sg)
    per_seed = [paired.target_scores(y, p, seg).mean() - paired.target_scores(y, pb, seg).mean() for p in pa]
    assert r["seed_deltas"] == pytest.approx(per_seed, abs=1e-12)
    assert r["delta"] == pytest.approx(np.mean(per_seed), abs=1e-12)
    assert r["se"] ** 2 == pytest.approx(r["se_time"] ** 2 + np.var(per_seed, ddof=1) / 3)
    assert r["ci_low"] < r["delta"] < r["ci_high"] and r["mde"] > 2.8 * r["se"]
    one = combine.seed_interval(c[:1], w, sg)          # one seed: time alone, said as NaN
    assert np.isnan(one["se_seed"]) and one["se"] == pytest.approx(one["se_time"])


def test_fixed_effect_weights_subjects_by_time_variance_and_adds_the_shared_seeds_once():
    a = dict(seed_deltas=[0.010, 0.012, 0.008], se_time=0.002, n_blocks=30)
    b = dict(seed_deltas=[0.000, 0.002, -0.002], se_time=0.004, n_blocks=30)
    r = combine.fixed_effect([a, b])
    w = np.array([1 / 0.002 ** 2, 1 / 0.004 ** 2])
    per_seed = (w[:, None] * np.array([a["seed_deltas"], b["seed_deltas"]])).sum(0) / w.sum()
    assert r["delta"] == pytest.approx(per_seed.mean())
    assert r["se"] ** 2 == pytest.approx(1 / w.sum() + per_seed.var(ddof=1) / 3)
    Q = (w * (np.array([0.010, 0.000]) - r["delta"]) ** 2).sum()
    assert r["Q"] == pytest.approx(Q) and r["I2"] == pytest.approx(max(0, (Q - 1) / Q))
    assert r["Q_p"] == pytest.approx(stats.chi2.sf(Q, 1))
    same = combine.fixed_effect([a, dict(a)])
    assert same["Q"] == pytest.approx(0) and same["I2"] == 0
    with pytest.raises(ValueError, match="2 subjects"):
        combine.fixed_effect([a])


def test_trend_is_the_least_squares_slope_over_log_tokens():
    rng = np.random.default_rng(1)
    J = 30
    seg = np.arange(J)
    w = np.full(J, 1 / J)
    tokens = np.array([1, 2, 4, 8, 16]) * 1000
    x = np.log2(tokens)
    c = np.asarray([0.001 * xi / J + 1e-5 * rng.standard_normal(J) for xi in x])
    r = combine.trend(c, tokens, w, seg)
    deltas = c.sum(1)
    assert r["slope"] == pytest.approx(np.polyfit(x, deltas, 1)[0], rel=1e-9)
    assert r["p"] < 1e-6 and r["n_checkpoints"] == 5
    flat = combine.trend(1e-5 * rng.standard_normal((5, J)), tokens, w, seg)
    assert flat["p"] > 0.01
    with pytest.raises(ValueError, match="at least 3"):
        combine.trend(c[:2], tokens[:2], w, seg)


@pytest.mark.slow
def test_seed_interval_covers_where_time_alone_does_not():
    """Models whose quality varies between seeds (true Δ over seeds = 0), 30 stories (the
    powered design), 300 data sets: the time-only SE of the seed mean rejects too often, the
    seed-aware interval and the subjects' combination stay calibrated (docs/validity.md 5g)."""
    rng = np.random.default_rng(5)
    n, fp_time, cover, cover_comb = 300, 0, 0, 0
    for _ in range(n):
        u = rng.standard_normal(3)
        per = []
        for _sub in range(2):
            y, sig, seg = simulate.responses(rng, simulate.ALL_LENS, 10)
            pa, pb = simulate.seeded_models(rng, sig, simulate.ALL_LENS, 0.9, 3, 0.08, u)
            per.append(combine.seed_interval(*_terms(y, pa, pb, seg, 10)))
        r = per[0]
        fp_time += 2 * stats.norm.sf(abs(r["delta"] / r["se_time"])) < 0.05
        cover += r["ci_low"] <= 0 <= r["ci_high"]
        f = combine.fixed_effect(per)
        cover_comb += f["ci_low"] <= 0 <= f["ci_high"]
    assert fp_time / n > 0.065, fp_time / n
    assert abs(cover / n - 0.95) <= 0.03, cover / n
    assert abs(cover_comb / n - 0.95) <= 0.03, cover_comb / n
