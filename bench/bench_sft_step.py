"""Benchmark: SmolLM2-135M fine-tuning steps and evaluation batches on the CPU, with glibc's
default allocation and with freed memory kept for reuse (lib.cluster.keep_freed_memory).

    python bench/bench_sft_step.py            # both settings, each in a fresh process, twice
    python bench/bench_sft_step.py --one keep # one setting, one line

Per setting: seconds per training step (batch 2 x 257 tokens, fp32, fused AdamW, as stage 04),
seconds per evaluation batch (8 x 257, inference mode), and per step the kernel (system) CPU
seconds and minor page faults of the process. Random token ids; one warm-up step first.
"""
import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def one(setting: str, steps: int = 6) -> None:
    import torch

    from lib import cluster as cl

    cl.limit_threads(cl.thread_count("auto"))
    if setting == "keep":
        assert cl.keep_freed_memory(), "this libc cannot keep freed memory"
    from lib.models import load_model

    m = load_model("smollm2-135m", device="cpu", dtype="float32").model.train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5, fused=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 40000, (2, 257), generator=g)

    def step():
        m(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def timed(f, n):
        f()
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(n):
            f()
        r1, dt = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
        return dt / n, (r1.ru_stime - r0.ru_stime) / n, (r1.ru_minflt - r0.ru_minflt) / n

    s, sys_s, flt = timed(step, steps)
    m.eval()
    y = torch.randint(0, 40000, (8, 257), generator=g)
    with torch.inference_mode():
        e, esys, eflt = timed(lambda: m(input_ids=y, labels=y), 3)
    print(f"| {setting} | {s:.2f} | {sys_s:.2f} | {flt:,.0f} | {e:.2f} | {esys:.2f} | {eflt:,.0f} |",
          flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", choices=["default", "keep"])
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    if a.one:
        return one(a.one)
    print("| allocation | s / step | system s / step | faults / step | s / eval batch | "
          "system s / batch | faults / batch |\n|---|---|---|---|---|---|---|", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for _ in range(a.repeats):
        for setting in ("default", "keep"):
            subprocess.run([sys.executable, __file__, "--one", setting], env=env, check=True)


if __name__ == "__main__":
    main()
