"""Contention benchmark: the ridge engine and activation extraction, idle and beside a process that
keeps 2 threads busy with torch matrix products (a second notebook kernel, a Dask worker).

    python bench/bench_contention.py [--threads N] [--spin]

Each measurement runs in a fresh process with this project's thread setting (lib.cluster:
threads from the CPUs available, OMP_WAIT_POLICY=PASSIVE); ``--spin`` measures the old setting
(OpenMP's default active waiting) for comparison. The last line is:

    contention: ridge_idle=<s> ridge_busy=<s> ridge_slowdown=<x> features_idle=<s> features_busy=<s> features_slowdown=<x>
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RIDGE = """
import time, numpy as np
from lib.cluster import limit_threads, thread_count
limit_threads(thread_count({threads!r}))
from lib.engine import Splitter, fit_score
rng = np.random.default_rng(0)
X = rng.standard_normal((1000, 3072), dtype=np.float32)
Y = rng.standard_normal((1000, 5000), dtype=np.float32)
t0 = time.perf_counter()
fit_score(X, Y, None, Splitter(gap=5))
print(time.perf_counter() - t0)
"""

FEATURES = """
import time
from lib.cluster import limit_threads, thread_count
limit_threads(thread_count({threads!r}))
from lib import features
from lib.models import load_model
from lib.paths import Paths
from lib.transcripts import story_transcript
st = Paths.from_env().stimuli / "pieman"
words = story_transcript(st / "align.csv").text.tolist()[:150]
lm = load_model("smollm2-135m", device="cpu")
t0 = time.perf_counter()
features.windowed_activations(lm, words, 8, 128, progress=False)
features.naive_activations(lm, words, 8, 128)
print(time.perf_counter() - t0)
"""

COMPETITOR = """
import torch
torch.set_num_threads(2)
a = torch.randn(1024, 1024)
while True:
    a = torch.tanh(a @ a) * 0.5
"""


def run(code: str, env: dict) -> float:
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=3600)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return float(r.stdout.strip().splitlines()[-1])


def measure(code: str, env: dict) -> tuple[float, float]:
    idle = run(code, env)
    comp = subprocess.Popen([sys.executable, "-c", COMPETITOR], env={**os.environ})
    try:
        time.sleep(2)
        busy = run(code, env)
    finally:
        comp.kill()
        comp.wait()
    return idle, busy


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", default="auto")
    ap.add_argument("--spin", action="store_true", help="OpenMP active waiting (the old way)")
    a = ap.parse_args()
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["HF_HUB_OFFLINE"] = "1"
    if not a.spin:
        from lib.cluster import quiet_threads_env

        env.update(quiet_threads_env())
    r_idle, r_busy = measure(RIDGE.format(threads=a.threads), env)
    print(f"ridge 1000 x 5000: idle {r_idle:.2f} s, busy {r_busy:.2f} s", flush=True)
    f_idle, f_busy = measure(FEATURES.format(threads=a.threads), env)
    print(f"features --quick: idle {f_idle:.2f} s, busy {f_busy:.2f} s", flush=True)
    print(f"contention: ridge_idle={r_idle:.2f} ridge_busy={r_busy:.2f} "
          f"ridge_slowdown={r_busy / r_idle:.1f} features_idle={f_idle:.2f} "
          f"features_busy={f_busy:.2f} features_slowdown={f_busy / f_idle:.1f}")


if __name__ == "__main__":
    main()
