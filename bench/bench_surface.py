"""What the surface option costs at real size: one SYNTHETIC pieman run (300 TRs) on fsaverage6
(2 x 40,962 vertices), written and read as Narratives lays it out, and one stage-05 unit fit
(one subject, one LM condition: 576 features x 5 delays, 4 inner folds, 5 blocked outer folds).

    python bench/bench_surface.py [--mesh fsaverage6] [--trs 300]

Prints file sizes, read time, the vertex mask, the fit's wall time and the peak RSS; the numbers
go to docs/benchmarks.md and the README's surface section.
"""
import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib import surface  # noqa: E402
from lib.cluster import limit_threads, thread_count  # noqa: E402
from lib.engine import Layout, Splitter, prepare, score  # noqa: E402
from lib.engine.inference import zscore_time  # noqa: E402
from lib.synthetic import realistic_noise  # noqa: E402
from lib.synthetic_surface import save_gifti_run, surface_layout, surface_run  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mesh", default="fsaverage6", choices=sorted(surface.MESH_VERTICES))
    ap.add_argument("--trs", type=int, default=300)
    a = ap.parse_args()
    limit_threads(thread_count("auto"))
    rng = np.random.default_rng(0)
    planted, medial = surface_layout(a.mesh)
    X = realistic_noise(rng, a.trs, 576)                     # stands in for LM features per TR
    sig = X[:, :8] @ rng.standard_normal((8, int(planted.sum())))
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        Y = surface_run(rng, sig / sig.std(0), np.full(int(planted.sum()), 0.3), planted, medial,
                        realistic_noise)
        left, right = save_gifti_run(Y, Path(d) / f"sub-x_task-pieman_space-{a.mesh}")
        t_write = time.perf_counter() - t
        mb = sum(p.stat().st_size for p in (left, right)) / 2 ** 20
        t = time.perf_counter()
        mask = surface.SurfaceMask.from_runs([left])
        B = surface.load_surface_bold(left, mask.mask)
        t_read = time.perf_counter() - t
    from lib.spaces import make_delays

    D = make_delays(X, (1, 2, 3, 4, 5))
    trim = slice(16, a.trs - 5)
    t = time.perf_counter()
    design = prepare(D[trim], Layout.single(len(D[trim]), "pieman"), Splitter.for_delays((1, 2, 3, 4, 5), 1.5))
    res = score(design, zscore_time(B[trim]).astype(np.float32))
    t_fit = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10
    print(f"surface: mesh={a.mesh} vertices={2 * surface.MESH_VERTICES[a.mesh]} "
          f"fitted={mask.n} trs={a.trs} files_MB={mb:.0f} write_s={t_write:.1f} "
          f"read_s={t_read:.1f} fit_s={t_fit:.1f} peak_rss_MB={peak:.0f} "
          f"targets_scored={int(np.isfinite(res.scores).sum())}")


if __name__ == "__main__":
    main()
