"""One prepared GPU run: determinism, extraction, ridge and the powered profile, timed.

    python bench/gpu_check.py --out gpu_check.json [--parts determinism extraction ridge powered]
                              [--budget 540]

Without a CUDA device it says so and exits 0 (nothing to measure). Models are architectures with
RANDOM weights (``random:smollm2-135m``, ``random:gpt2``: the GGUF of the real SmolLM2 cannot reach
every GPU machine); timings equal the real models'. Parts, each recorded in the JSON as it ends:

* ``determinism``: two separate processes fine-tune the same model (bf16, the deterministic
  settings of lib.sft), extract activations and fit a ridge table on the GPU; the SHA-256 of the
  weights, the activations and the table must agree. Also the cost of deterministic attention
  (seconds per step with the math SDPA backend against the default backends).
* ``extraction``: windowed extraction, fp32 and bf16, every shape warmed before timing, tok/s
  against the bare forward pass at the same batch shape, and bf16's RMS difference from fp32.
* ``ridge``: 1000 x 3072 x 5000 and 3000 x 3072 x 50,000, 10 alphas, 5 outer x 4 inner folds,
  torch-CUDA seconds and peak memory; the scores against numpy on the CPU.
* ``powered``: ``params/lebel-gpu.yaml`` (the powered design: every story held out, 3 seeds,
  checkpoints, the layer profile) through ``lib.pipeline --no-kernel``, each stage timed; then
  stage 05 once more, and its tables compared bit for bit with the first run's.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def sync():
    import torch

    torch.cuda.synchronize()


def sha(a) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def _words(n: int):
    from lib.paths import Paths
    from lib.transcripts import story_transcript

    st = Paths.from_env().stimuli
    words = []
    for s in ("tunnel", "pieman", "lucy", "black"):
        words += story_transcript(st / s / "align.csv").text.tolist()
    return words[:n]


# --------------------------------------------------------------------------- determinism
def one_process(tmp: str) -> dict:
    """What one process produces: fine-tuned weights, activations, a ridge table (hashes)."""
    import numpy as np
    import torch

    from lib import features, sft
    from lib.engine import ridge
    from lib.models import load_model
    from lib.paths import Paths
    from lib.transcripts import read_alignment

    st = Paths.from_env().stimuli
    texts = {s: " ".join(read_alignment(st / s / "align.csv").word) for s in ("black", "forgot")}
    cfg = sft.SFTConfig(base_model="random:smollm2-135m", steps=20, lr=1e-4, batch_size=8,
                        block_size=256, device="cuda", precision="bf16", checkpoint_every=1000,
                        snapshots=(10,))
    sft.train(cfg, texts, Path(tmp) / "sft", None, progress=False)
    lm = load_model(str(Path(tmp) / "sft"), device="cuda", dtype="float32")
    w = torch.cat([p.detach().flatten().float().cpu() for p in lm.model.parameters()]).numpy()
    acts = features.windowed_activations(lm, _words(3000), 8, 256, batch_size=32,
                                         progress=False)["activations"]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1200, 768), dtype=np.float32)
    Y = X[:, :50] @ rng.standard_normal((50, 500), dtype=np.float32) + \
        rng.standard_normal((1200, 500), dtype=np.float32) * 5
    r = ridge.fit_score(X, Y, None, ridge.Splitter(gap=5), backend="torch", device="cuda")
    return {"weights": sha(w), "activations": sha(acts), "ridge_scores": sha(r.scores),
            "ridge_alphas": sha(r.alphas)}


def determinism(res, tmp):
    outs = []
    for i in range(2):
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, __file__, "--one-process", f"{tmp}/proc{i}"],
                           capture_output=True, text=True, cwd=ROOT)
        if p.returncode:
            raise RuntimeError(p.stderr[-3000:])
        outs.append(json.loads(p.stdout.strip().splitlines()[-1]))
        outs[-1]["seconds"] = round(time.perf_counter() - t0, 1)
    same = {k: outs[0][k] == outs[1][k] for k in outs[0] if k != "seconds"}
    res["determinism"] = {"processes": outs, "identical": same}
    res["deterministic_attention_cost"] = attention_cost()
    print("determinism", res["determinism"], res["deterministic_attention_cost"], flush=True)


def attention_cost() -> dict:
    """Seconds per bf16 training step (8 x 257 tokens) with the math attention backend (the
    deterministic one) against the default backends."""
    import contextlib

    import torch

    from lib import sft
    from lib.models import load_model

    lm = load_model("random:smollm2-135m", device="cuda", dtype="float32")
    m = lm.model.train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-5, fused=True)
    x = torch.randint(0, 40000, (8, 257), device="cuda")
    out = {}
    for name, ctx in (("math_deterministic", lambda: sft.deterministic_attention("cuda")),
                      ("default", contextlib.nullcontext)):
        for rep in range(13):
            if rep == 3:
                sync()
                t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16), ctx():
                m(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync()
        out[f"{name}_s_per_step"] = (time.perf_counter() - t0) / 10
    return out


# --------------------------------------------------------------------------- extraction
def bare_forward(lm, batch: int, context: int, layer: int = 8, reps: int = 10) -> float:
    """tok/s of the forward pass alone (to the layer, as extraction runs it) at a batch shape."""
    import numpy as np

    from lib import features

    rng = np.random.default_rng(0)
    seqs = [rng.integers(100, 20000, context + 1) for _ in range(batch)]
    features._forward(lm, seqs, [layer])
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        features._forward(lm, seqs, [layer])
    sync()
    return batch * context * reps / (time.perf_counter() - t0)


def extraction(res):
    import numpy as np

    from lib import features
    from lib.models import load_model

    words = _words(8000)
    for name, context in (("random:smollm2-135m", 256), ("random:gpt2", 512)):
        ref = None
        for dtype in ("float32", "bfloat16"):
            lm = load_model(name, device="cuda", dtype=dtype)
            n_tok = len(features.tokenize_words(words, lm.tokenizer)[0])
            for batch in (8, 32, 128):
                features.windowed_activations(lm, words, 8, context, batch_size=batch,
                                              progress=False)      # every shape, warm
                sync()
                t0 = time.perf_counter()
                a = features.windowed_activations(lm, words, 8, context, batch_size=batch,
                                                  progress=False)["activations"]
                sync()
                t = time.perf_counter() - t0
                row = {"tokens": n_tok, "seconds": t, "tok_per_s": n_tok / t,
                       "bare_forward_tok_per_s": bare_forward(lm, batch, context)}
                if dtype == "float32" and batch == 32:
                    ref = a
                    sub = words[:400]
                    b = features.naive_activations(lm, sub, 8, context)["activations"]
                    w = features.windowed_activations(lm, sub, 8, context,
                                                      progress=False)["activations"]
                    row["max_abs_diff_vs_per_word_400"] = float(np.abs(w - b).max())
                if dtype == "bfloat16" and batch == 32 and ref is not None:
                    row["rms_diff_vs_fp32_relative"] = float(
                        np.sqrt(((a - ref) ** 2).mean()) / np.sqrt((ref ** 2).mean()))
                res[f"extraction_{name}_{dtype}_b{batch}"] = row
                print("extraction", name, dtype, batch, row, flush=True)
            del lm


# --------------------------------------------------------------------------- ridge
def ridge(res):
    import numpy as np
    import torch

    from lib.engine import ridge as enc

    rng = np.random.default_rng(0)
    for n, t in [(1000, 5000), (3000, 50000)]:
        p = 3072
        X = rng.standard_normal((n, p), dtype=np.float32)
        W = rng.standard_normal((p, 64), dtype=np.float32) @ \
            rng.standard_normal((64, t), dtype=np.float32) / np.sqrt(p * 64)
        Y = X @ W * 3 + rng.standard_normal((n, t), dtype=np.float32)
        enc.fit_score(X[:, :64], Y[:, :10], None, enc.Splitter(gap=5), backend="torch", device="cuda")  # warm-up
        times = []
        for _ in range(2):
            sync()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            r_t = enc.fit_score(X, Y, None, enc.Splitter(gap=5), backend="torch", device="cuda", batch_targets=50000)
            sync()
            times.append(time.perf_counter() - t0)
        out = {"torch_cuda_s": min(times), "torch_cuda_s_each": times,
               "cuda_peak_gb": torch.cuda.max_memory_allocated() / 1e9}
        cols = slice(0, 5000)
        t0 = time.perf_counter()
        r_n = enc.fit_score(X, Y[:, cols], None, enc.Splitter(gap=5), backend="numpy")
        out["numpy_cpu_s_5000_targets"] = time.perf_counter() - t0
        out["max_abs_dr_torch_vs_numpy"] = float(np.nanmax(np.abs(r_t.scores[cols] - r_n.scores)))
        res[f"ridge_n{n}_t{t}"] = out
        print("ridge", n, t, out, flush=True)


# --------------------------------------------------------------------------- powered profile
def _stage_times(log: str) -> dict:
    import re

    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r"\[(\d\d_\w+)\] done in (\d+) s", log)}


def _tables_hash(run: Path) -> dict:
    d = run / "brain_score"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            for p in sorted(d.glob("*.csv"))}


def powered(res, deadline: float):
    cmd = [sys.executable, "-m", "lib.pipeline", "--profile", "params/lebel-gpu.yaml",
           "--no-kernel", "--force"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    out = {"wall_s": wall, "returncode": p.returncode, "stages_s": _stage_times(p.stdout),
           "log_tail": (p.stdout + p.stderr)[-3000:]}
    res["powered"] = out
    print("powered", {k: v for k, v in out.items() if k != "log_tail"}, flush=True)
    if p.returncode:
        return
    run = ROOT / "results" / "lebel-gpu"
    first = _tables_hash(run)
    out["answer_head"] = (run / "brain_score" / "answer.csv").read_text()[:1500]
    if time.time() + 1.5 * out["stages_s"].get("05_brain_score", 120) > deadline:
        out["repeat_05"] = "skipped: not enough time left"
        return
    t0 = time.perf_counter()
    q = subprocess.run(cmd[:-1] + ["--force", "--only", "05"], capture_output=True, text=True,
                       cwd=ROOT)
    second = _tables_hash(run)
    out["repeat_05"] = {"seconds": time.perf_counter() - t0, "returncode": q.returncode,
                        "identical": {k: first[k] == second.get(k) for k in first}}
    print("repeat 05", out["repeat_05"], flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--tmp", default="/tmp/gpu_check")
    ap.add_argument("--parts", nargs="*",
                    default=["determinism", "extraction", "ridge", "powered"])
    ap.add_argument("--budget", type=float, default=540, help="seconds for the whole run")
    ap.add_argument("--one-process", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one_process:
        print(json.dumps(one_process(a.one_process)))
        return
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device here: nothing measured (run this on a GPU machine)")
        return
    deadline = time.time() + a.budget
    import transformers

    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d"),
           "commit": os.environ.get("GPU_CHECK_COMMIT") or subprocess.run(
               ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
               cwd=ROOT).stdout.strip() or "unknown"}
    parts = {"determinism": lambda: determinism(res, a.tmp), "extraction": lambda: extraction(res),
             "ridge": lambda: ridge(res), "powered": lambda: powered(res, deadline)}
    for name in a.parts:
        try:
            parts[name]()
        except Exception:  # record and go on: one run, every part
            import traceback

            res[f"{name}_error"] = traceback.format_exc()[-4000:]
            print(res[f"{name}_error"], flush=True)
        Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if "log_tail" not in str(k)}, indent=1)[-6000:])


if __name__ == "__main__":
    main()
