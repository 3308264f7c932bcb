"""Δ between two models within one subject: exact definition, and calibration on data as smooth
as real BOLD (AR(0.9)): false-positive rate of the block-exchange test and coverage of its CI."""
import numpy as np
import pytest

from lib.synthetic import _ar1
from lib.engine.paired import (autocorr_time, block_contributions, choose_block, fit_difference,
                        paired_comparison, target_scores as scores)

LENS = (291, 348, 271)    # the three LeBel test stories


def simulate(rng, phi=0.9, k=10, effect=0.0):
    """Responses and two predictions of equal quality (effect = 0) or B degraded."""
    ys, pa, pb, seg = [], [], [], []
    for s, n in enumerate(LENS):
        sig = _ar1(rng, n, k, phi)
        ys.append(0.3 * sig + _ar1(rng, n, k, phi))
        pa.append(sig + 1.5 * _ar1(rng, n, k, phi))
        pb.append((1 - effect) * sig + 1.5 * _ar1(rng, n, k, phi))
        seg += [s] * n
    return np.vstack(ys), np.vstack(pa), np.vstack(pb), np.asarray(seg)


def test_delta_is_the_difference_of_mean_story_r():
    rng = np.random.default_rng(0)
    y, pa, pb, seg = simulate(rng, effect=1.0)   # B carries no signal
    res = paired_comparison(y, pa, pb, seg, {"first3": np.arange(3), "all": np.arange(10)},
                            n_perm=500).set_index("targets")
    for name, cols in (("first3", slice(0, 3)), ("all", slice(None))):
        ra = np.mean([[np.corrcoef(y[seg == s, k], pa[seg == s, k])[0, 1]
                       for k in range(10)[cols]] for s in range(3)])
        rb = np.mean([[np.corrcoef(y[seg == s, k], pb[seg == s, k])[0, 1]
                       for k in range(10)[cols]] for s in range(3)])
        assert res.loc[name, "score_a"] == pytest.approx(ra, abs=1e-9)
        assert res.loc[name, "delta"] == pytest.approx(ra - rb, abs=1e-9)
    assert (res.ci_low < res.delta).all() and (res.delta < res.ci_high).all()
    # a degraded B is detected
    assert res.loc["all", "p"] < 0.05 and res.loc["all", "ci_low"] > 0


def test_block_contributions_sum_to_delta_and_weights_to_one():
    rng = np.random.default_rng(1)
    y, pa, pb, seg = simulate(rng)
    d = fit_difference(y, pa, pb, seg, np.arange(10))
    c, w, sg = block_contributions(d, seg, 30)
    assert c.sum() == pytest.approx(scores(y, pa, seg).mean() - scores(y, pb, seg).mean())
    assert w.sum() == pytest.approx(1.0) and len(set(sg)) == 3


def test_block_length_follows_the_measured_autocorrelation():
    rng = np.random.default_rng(2)
    smooth = [choose_block(fit_difference(*simulate(rng, phi)[:3], simulate(rng, phi)[3],
                                          np.arange(10)), simulate(rng, phi)[3])
              for phi in (0.0, 0.9)]
    assert smooth[0] == 10 and smooth[1] > 20          # white data: the minimum block
    y, pa, pb, seg = simulate(rng, 0.9)
    tau = autocorr_time(fit_difference(y, pa, pb, seg, np.arange(10)), seg)
    assert 5 < tau < 15                                 # AR(0.9) x AR(0.9): 9.5 TRs in theory


@pytest.mark.slow
def test_false_positive_rate_and_ci_coverage_on_smooth_data():
    """Two feature sets of equal quality, AR(0.9) responses and predictions: p < .05 in 5% of
    800 simulations (+-1.5%) and the 95% CI covers 0 in 95% (+-2%)."""
    rng = np.random.default_rng(7)
    n_sim, fp, cover = 800, 0, 0
    for i in range(n_sim):
        y, pa, pb, seg = simulate(rng)
        r = paired_comparison(y, pa, pb, seg, {"all": np.arange(10)}, n_perm=1000,
                              seed=i).iloc[0]
        fp += r.p < 0.05
        cover += r.ci_low <= 0 <= r.ci_high
    assert abs(fp / n_sim - 0.05) <= 0.015, fp / n_sim
    assert abs(cover / n_sim - 0.95) <= 0.02, cover / n_sim


def test_p_and_ci_use_the_same_sign_patterns_so_they_agree():
    """The CI excludes 0 exactly when p < 0.05 (one set of sign patterns for both)."""
    rng = np.random.default_rng(3)
    agree = 0
    for i in range(40):
        y, pa, pb, seg = simulate(rng, effect=0.15 * (i % 4))
        r = paired_comparison(y, pa, pb, seg, {"all": np.arange(10)}, n_perm=500,
                              seed=i).iloc[0]
        agree += (r.p < 0.05) == (not r.ci_low <= 0 <= r.ci_high)
    assert agree == 40


def test_the_neighbour_kernel_never_drives_the_variance_below_zero():
    """Bartlett weights (1/2 for neighbours): with neighbours as negative as they can be the
    variance is 20 - 19 = 1 (a weight of 1 gave 20 - 38 < 0, clipped to ~0)."""
    from lib.engine.paired import hac_se

    c = np.array([1.0, -1.0] * 10)
    seg = np.zeros(20, int)
    assert hac_se(c, seg) == pytest.approx(np.sqrt(1.0 * 20 / 19))
    assert hac_se(c, np.arange(20)) == pytest.approx(np.sqrt(20 * 20 / 19))   # other stories


@pytest.mark.slow
def test_whole_stories_are_exchanged_from_ten_stories_on_and_calibrated():
    """10 held-out stories (the first 10 LeBel lengths), AR(0.95): whole stories are the
    exchange unit (all 1024 patterns: exact), p < .05 in 5% of 1000 simulations (+-1.5%), the
    CI covers 0 in 95% (+-2%). docs/validity.md 5b has the 30-story design at 10 and 200
    targets."""
    from lib.engine import simulate as sim

    lens = sim.ALL_LENS[:10]
    rng = np.random.default_rng(17)
    n_sim, fp, cover = 1000, 0, 0
    for i in range(n_sim):
        y, sig, seg = sim.responses(rng, lens, 10, 0.95)
        pa, pb = (sim.prediction(rng, sig, lens, 0.95) for _ in range(2))
        r = paired_comparison(y, pa, pb, seg, {"all": np.arange(10)}, n_perm=1024,
                              seed=i).iloc[0]
        assert r.exchange_unit == "story"
        fp += r.p < 0.05
        cover += r.ci_low <= 0 <= r.ci_high
    assert abs(fp / n_sim - 0.05) <= 0.015, fp / n_sim
    assert abs(cover / n_sim - 0.95) <= 0.02, cover / n_sim
