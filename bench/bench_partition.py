"""What a variance partition costs at narratives-mini's size: one subject signature of pieman
(279 kept TRs), bands word_rate + raw + sft (1 + 576 + 576 units x 5 delays, SYNTHETIC smooth
features), 5 weightings drawn per level, 8,735 targets, and the tested space's conditional
placebo (4 shifts).

    python bench/bench_partition.py [--targets 8735] [--shifts 4]

Prints the time of the joint designs, of the placebo designs (with the joint designs reused where
the tested band has weight 0, and without), and of one joint scoring; the numbers go to
docs/benchmarks.md.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.cluster import limit_threads, thread_count  # noqa: E402
from lib.engine import partition as part  # noqa: E402
from lib.engine.ridge import Layout  # noqa: E402
from lib.spaces import make_delays  # noqa: E402
from lib.synthetic import _ar1  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--targets", type=int, default=8735)
    ap.add_argument("--shifts", type=int, default=4)
    a = ap.parse_args()
    limit_threads(thread_count("auto"))
    rng = np.random.default_rng(0)
    n = 279
    Xs = [make_delays(_ar1(rng, n, k, 0.9), (1, 2, 3, 4, 5)).astype(np.float32)
          for k in (1, 576, 576)]
    lay = Layout.single(n, "pieman")
    cv, kw = part.Splitter(gap=30), dict(n_iter=5)
    joint, t_joint = timed(lambda: part.banded_prepare(Xs, lay, cv, **kw))
    _, t_reuse = timed(lambda: part.placebo_band_designs(Xs, 2, lay, cv, n_shifts=a.shifts,
                                                         joint=joint, **kw))
    _, t_full = timed(lambda: part.placebo_band_designs(Xs, 2, lay, cv, n_shifts=a.shifts,
                                                        **kw))
    Y = rng.standard_normal((n, a.targets)).astype(np.float32)
    _, t_score = timed(lambda: part.banded_score(joint, Y, select="r", pooled=True,
                                                 measure="rsq"))
    print(f"| weightings | joint designs | placebo designs ({a.shifts} shifts), reused / rebuilt "
          f"| one scoring of {a.targets} targets |\n|---|---|---|---|\n"
          f"| {len(joint)} | {t_joint:.1f} s | {t_reuse:.1f} s / {t_full:.1f} s | "
          f"{t_score:.1f} s |")


if __name__ == "__main__":
    main()
