"""Calibration of the within-subject paired comparison (lib/engine/paired.py), run by hand; the
numbers go to docs/validity.md (5b).

    python bench/validity_paired.py [--sims 500] [--targets 10 200] [--phi 0.9 0.95]

SYNTHETIC: responses and two predictions of equal quality (shared AR(phi) signal, independent
AR(phi) noise; lib/engine/simulate.py), on two layouts of held-out time: the 3 LeBel test stories
(910 TRs: blocks of TRs are exchanged) and all 30 LeBel stories (the powered design: whole
stories are exchanged). Reported: the false-positive rate at p < .05 and the coverage of 0 by the
95% CI (the test inverted, with the p-value's own sign patterns).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.engine import paired, simulate  # noqa: E402


def run(sims, lens, k, phi, n_perm, seed=7):
    rng = np.random.default_rng([seed, k, int(phi * 100), len(lens)])
    fp = cover = 0
    units = []
    for i in range(sims):
        y, sig, seg = simulate.responses(rng, lens, k, phi)
        pa = simulate.prediction(rng, sig, lens, phi)
        pb = simulate.prediction(rng, sig, lens, phi)
        r = paired.paired_comparison(y, pa, pb, seg, {"all": np.arange(k)}, n_perm=n_perm,
                                     seed=i).iloc[0]
        fp += r.p < 0.05
        cover += r.ci_low <= 0 <= r.ci_high
        units.append(r.exchange_unit)
    return fp / sims, cover / sims, max(set(units), key=units.count)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sims", type=int, default=500)
    ap.add_argument("--targets", type=int, nargs="*", default=[10, 200])
    ap.add_argument("--phi", type=float, nargs="*", default=[0.9, 0.95])
    ap.add_argument("--n-perm", type=int, default=1000)
    a = ap.parse_args()
    print(f"{a.sims} simulations per row, {a.n_perm} sign patterns")
    print("| held-out time | targets | phi | exchange unit (most often) | FPR at p < .05 | "
          "95% CI covers 0 | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name, lens in (("3 test stories, 910 TRs", simulate.TEST_LENS),
                       ("30 stories, 10,501 TRs", simulate.ALL_LENS)):
        for k in a.targets:
            for phi in a.phi:
                t0 = time.time()
                fp, cover, unit = run(a.sims, lens, k, phi, a.n_perm)
                print(f"| {name} | {k} | {phi} | {unit} | {fp:.3f} | {cover:.3f} | "
                      f"{time.time() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
