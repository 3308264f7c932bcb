"""Calibration of Δ over fine-tuning seeds and over subjects (lib/engine/combine.py), run by hand;
the numbers go to docs/validity.md (5g).

    python bench/validity_seeds.py [--sims 1000] [--lens test|all] [--targets 10]

SYNTHETIC: per simulated data set, two subjects' responses (AR(phi) signal and noise, the LeBel
stories' lengths), M = 3 seeds of model A whose quality varies between seeds (noise x
exp(seed_sd x u), u ~ N(0, 1), shared by both subjects: the same models score them) and a model B
matched so that the true Δ(A - B) over seeds is 0. Reported: the false-positive rate at p < .05
and the coverage of 0 by the 95% CI, for one subject (time-only SE of the seed mean, and
seed_interval) and for the two subjects combined (fixed_effect).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.engine import combine, paired, simulate  # noqa: E402


def one_subject(rng, lens, k, phi, M, seed_sd, u):
    """(seed_interval result, time-only z p) for one subject scored by seeds with effects u."""
    y, sig, seg = simulate.responses(rng, lens, k, phi)
    pa, pb = simulate.seeded_models(rng, sig, lens, phi, M, seed_sd, u)
    cols = np.arange(k)
    ds = np.asarray([paired.fit_difference(y, p, pb, seg, cols) for p in pa])
    L = paired.choose_unit(ds.mean(0), seg)
    terms = [paired.block_contributions(d, seg, L) for d in ds]
    c = np.asarray([t[0] for t in terms])
    r = combine.seed_interval(c, terms[0][1], terms[0][2])
    z = r["delta"] / r["se_time"]
    return r, float(2 * stats.norm.sf(abs(z)))


def run(sims, lens, k, phi, M, seed_sd, seed=11):
    rng = np.random.default_rng(seed)
    n = dict(fp_time=0, fp_seed=0, cov_seed=0, fp_comb=0, cov_comb=0)
    for _ in range(sims):
        u = rng.standard_normal(M)
        per = [one_subject(rng, lens, k, phi, M, seed_sd, u) for _ in range(2)]
        r, p_time = per[0]
        n["fp_time"] += p_time < 0.05
        n["fp_seed"] += r["p"] < 0.05
        n["cov_seed"] += r["ci_low"] <= 0 <= r["ci_high"]
        f = combine.fixed_effect([q[0] for q in per])
        n["fp_comb"] += f["p"] < 0.05
        n["cov_comb"] += f["ci_low"] <= 0 <= f["ci_high"]
    return {key: v / sims for key, v in n.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sims", type=int, default=1000)
    ap.add_argument("--lens", choices=("test", "all"), default="test")
    ap.add_argument("--targets", type=int, default=10)
    ap.add_argument("--phi", type=float, nargs="*", default=[0.9])
    ap.add_argument("--seed-sd", type=float, nargs="*", default=[0.0, 0.02, 0.05])
    a = ap.parse_args()
    lens = simulate.TEST_LENS if a.lens == "test" else simulate.ALL_LENS
    print(f"{a.sims} simulations per row, {len(lens)} stories ({sum(lens)} TRs), "
          f"{a.targets} targets, 3 seeds, 2 subjects")
    print("| phi | seed SD | FPR time-only SE | FPR seed_interval | coverage seed_interval | "
          "FPR combined | coverage combined | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for phi in a.phi:
        for sd in a.seed_sd:
            t0 = time.time()
            r = run(a.sims, lens, a.targets, phi, 3, sd)
            print(f"| {phi} | {sd} | {r['fp_time']:.3f} | {r['fp_seed']:.3f} | "
                  f"{r['cov_seed']:.3f} | {r['fp_comb']:.3f} | {r['cov_comb']:.3f} | "
                  f"{time.time() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
