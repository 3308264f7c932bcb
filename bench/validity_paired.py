"""Calibration of the within-subject paired comparison (lib/paired.py), run by hand; the numbers
go to docs/validity.md.

    python bench/validity_paired.py [--sims 1000]

Responses and two predictions of equal quality (signal + independent AR(phi) noise, 10 targets,
three stories of the LeBel test lengths), for phi = 0.85, 0.9, 0.95 (BOLD at TR 1.5-2 s): the
false-positive rate of the block-exchange test at p < .05 and the coverage of 0 by its 95% CI,
for the shipped method and the two it replaced (a percentile block bootstrap of r, and sign flips
of block sums without the neighbour term).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.engine import paired  # noqa: E402
from lib.synthetic import _ar1  # noqa: E402

LENS = (291, 348, 271)


def simulate(rng, phi, k=10):
    ys, pa, pb, seg = [], [], [], []
    for s, n in enumerate(LENS):
        sig = _ar1(rng, n, k, phi)
        ys.append(0.3 * sig + _ar1(rng, n, k, phi))
        pa.append(sig + 1.5 * _ar1(rng, n, k, phi))
        pb.append(sig + 1.5 * _ar1(rng, n, k, phi))
        seg += [s] * n
    return np.vstack(ys), np.vstack(pa), np.vstack(pb), np.asarray(seg)


def plain_sign_flip(y, pa, pb, seg, rng):
    """The replaced variant: block sums flipped, no neighbour term, no studentisation."""
    d = paired.fit_difference(y, pa, pb, seg, np.arange(y.shape[1]))
    c, _, _ = paired.block_contributions(d, seg, paired.choose_block(d, seg))
    flips = rng.choice([-1.0, 1.0], size=(2000, len(c))) @ c
    return (1 + (np.abs(flips) >= abs(c.sum())).sum()) / 2001


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sims", type=int, default=1000)
    a = ap.parse_args()
    print("| phi | method | FPR at p < .05 | CI coverage of 0 | median block (TRs) | seconds |")
    print("|---|---|---|---|---|---|")
    for phi in (0.85, 0.9, 0.95):
        rng = np.random.default_rng(7)
        t0 = time.time()
        fp = cover = fp_plain = 0
        blocks = []
        for i in range(a.sims):
            y, pa, pb, seg = simulate(rng, phi)
            r = paired.paired_comparison(y, pa, pb, seg, {"all": np.arange(10)}, n_perm=2000,
                                         seed=i).iloc[0]
            fp += r.p < 0.05
            cover += r.ci_low <= 0 <= r.ci_high
            blocks.append(r.block_trs)
            fp_plain += plain_sign_flip(y, pa, pb, seg, rng) < 0.05
        print(f"| {phi} | studentised block exchange, inverted CI | {fp / a.sims:.3f} | "
              f"{cover / a.sims:.3f} | {np.median(blocks):.0f} | {time.time() - t0:.0f} |")
        print(f"| {phi} | plain sign flips of block sums | {fp_plain / a.sims:.3f} | - | "
              f"{np.median(blocks):.0f} | |", flush=True)


if __name__ == "__main__":
    main()
