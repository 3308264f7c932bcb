"""One short GPU run: CUDA paths of extraction, SFT and ridge, with timings.

    python bench/gpu_check.py --out results.json

Uses ``random:gpt2`` (GPT-2 small's architecture, random weights, no download): timings equal the
real GPT-2's. Checks: windowed == naive on CUDA (fp32), SFT loss falls under bf16 autocast, ridge
torch-CUDA == numpy-CPU within 1e-4, and times each path.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def sync():
    import torch

    torch.cuda.synchronize()


def extraction(res):
    import numpy as np

    from lib import features
    from lib.models import load_model
    from lib.paths import Paths
    from lib.transcripts import story_transcript

    st = Paths.from_env().stimuli
    words = story_transcript(st / "tunnel" / "align.csv").text.tolist()  # 3435 words
    for dtype in ("float32", "bfloat16"):
        lm = load_model("random:gpt2", device="cuda", dtype=dtype)
        n_tok = len(features.tokenize_words(words, lm.tokenizer)[0])
        features.windowed_activations(lm, words[:50], 8, 512, progress=False)
        sync()
        t0 = time.perf_counter()
        w = features.windowed_activations(lm, words, 8, 512, batch_size=16, progress=False)
        sync()
        tw = time.perf_counter() - t0
        out = {"tokens": n_tok, "windowed_s": tw, "windowed_tok_per_s": n_tok / tw}
        if dtype == "float32":
            sub = words[:600]
            n_sub = len(features.tokenize_words(sub, lm.tokenizer)[0])
            a = features.windowed_activations(lm, sub, 8, 512, progress=False)
            sync()
            t0 = time.perf_counter()
            b = features.naive_activations(lm, sub, 8, 512)
            sync()
            tn = time.perf_counter() - t0
            out.update(naive_tok_per_s_600words=n_sub / tn,
                       max_abs_diff_600words=float(np.abs(a["activations"] - b["activations"]).max()))
        res[f"extraction_{dtype}"] = out
        print("extraction", dtype, out, flush=True)


def sft_check(res, tmp):
    from lib import sft
    from lib.paths import Paths
    from lib.transcripts import read_alignment

    st = Paths.from_env().stimuli
    texts = {s: " ".join(read_alignment(st / s / "align.csv").word)
             for s in ["black", "forgot", "bronx", "merlin"]}
    for method in ("full", "lora"):
        cfg = sft.SFTConfig(base_model="random:gpt2", steps=60, lr=5e-4 if method == "full" else 2e-3,
                            batch_size=8, block_size=256, method=method, device="cuda",
                            checkpoint_every=1000)
        t0 = time.perf_counter()
        m = sft.train(cfg, texts, Path(tmp) / f"sft_{method}", None, progress=False)
        m["wall_s"] = time.perf_counter() - t0
        m["s_per_step"] = m["seconds"] / cfg.steps
        res[f"sft_{method}"] = m
        print("sft", method, m, flush=True)


def ridge(res):
    import numpy as np
    import torch

    from lib.engine import inference as inf
    from lib.engine import ridge as enc

    rng = np.random.default_rng(0)
    for n, t in [(1000, 5000), (3000, 50000)]:
        p = 3072
        X = rng.standard_normal((n, p), dtype=np.float32)
        W = rng.standard_normal((p, 64), dtype=np.float32) @ rng.standard_normal((64, t), dtype=np.float32) / np.sqrt(p * 64)
        Y = X @ W * 3 + rng.standard_normal((n, t), dtype=np.float32)
        enc.fit_score(X[:, :64], Y[:, :10], gap=5, backend="torch", device="cuda")  # warm-up
        sync()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        r_t = enc.fit_score(X, Y, gap=5, backend="torch", device="cuda", batch_targets=50000)
        sync()
        tt = time.perf_counter() - t0
        out = {"torch_cuda_s": tt, "cuda_peak_gb": torch.cuda.max_memory_allocated() / 1e9}
        if t <= 5000:
            t0 = time.perf_counter()
            r_n = enc.fit_score(X, Y, gap=5, backend="numpy")
            out["numpy_cpu_s"] = time.perf_counter() - t0
            out["max_abs_dr_torch_vs_numpy"] = float(np.nanmax(np.abs(r_t.scores - r_n.scores)))
        res[f"ridge_n{n}_t{t}"] = out
        print("ridge", n, t, out, flush=True)
    # permutation null on a mini-sized problem (282 TRs, 2880 features, 8735 voxels)
    X = rng.standard_normal((282, 2880), dtype=np.float32)
    Y = rng.standard_normal((282, 8735), dtype=np.float32)
    for stop in (10, None):
        spec = inf.NullSpec(n_perm=1000, perm_stop=stop)
        t0 = time.perf_counter()
        D = enc.prepare(X, delays=(1, 2, 3, 4, 5), backend="torch", device="cuda")
        r = enc.score(D, Y)
        _, p, n_done = inf.permutation_test([[inf.null_plan(D, Y, r, spec)]], r.scores, spec)
        sync()
        res[f"perm1000_stop{stop}"] = {"s": time.perf_counter() - t0,
                                       "fpr05": float(np.mean(p < 0.05)),
                                       "mean_perms": float(n_done.mean())}
        print("perm", stop, res[f"perm1000_stop{stop}"], flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--tmp", default="/tmp/gpu_check")
    ap.add_argument("--parts", nargs="*", default=["extraction", "sft", "ridge"])
    a = ap.parse_args()
    import torch

    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    import transformers

    res["transformers"] = transformers.__version__
    for name, fn in [("extraction", lambda: extraction(res)), ("sft", lambda: sft_check(res, a.tmp)),
                     ("ridge", lambda: ridge(res))]:
        if name not in a.parts:
            continue
        try:
            fn()
        except Exception as e:  # record and go on: one run, every path
            import traceback

            res[f"{name}_error"] = traceback.format_exc()
            print(res[f"{name}_error"], flush=True)
        Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
