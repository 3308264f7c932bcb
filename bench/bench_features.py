"""Benchmark: windowed activation extraction vs one forward pass per word (same contexts).

    python bench/bench_features.py [--model smollm2-135m|random:gpt2] [--story pieman] [--quick]
                                   [--naive-words N] [--cpu-bf16]

Last line (for scripts):
    features: windowed=<tok/s> naive=<tok/s> speedup=<x> max_abs_diff=<d>
tok/s = the story's tokens divided by wall time. --quick: first 150 words, context 128.
--naive-words N: the per-word reference runs on the first N words only (its tok/s and the
max |diff| are over those words). --cpu-bf16: the windowed pass under bfloat16 autocast (the
reference stays fp32, so max |diff| is the bf16 error).
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--story", default="pieman")
    ap.add_argument("--layer", default="8")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--words", type=int, default=0, help="first N words (0 = all)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--naive-words", type=int, default=0, help="reference on the first N words")
    ap.add_argument("--cpu-bf16", action="store_true")
    a = ap.parse_args()
    import numpy as np
    import torch

    from lib import features
    from lib.models import load_model
    from lib.paths import Paths
    from lib.transcripts import story_transcript

    torch.set_num_threads(a.threads)
    if a.quick:
        a.words, a.context = a.words or 150, 128
    st = Paths.from_env().stimuli / a.story
    tr = story_transcript(st / "align.csv", st / "transcript.txt"
                          if (st / "transcript.txt").exists() else None)
    words = tr.text.tolist()[: a.words or None]
    lm = load_model(a.model, device=a.device, cpu_bf16=a.cpu_bf16)
    layer = a.layer if a.layer == "all" else min(int(a.layer), lm.n_layers)
    n_tok = len(features.tokenize_words(words, lm.tokenizer)[0])
    features.windowed_activations(lm, words[:20], layer, a.context, progress=False)  # warm-up
    sync = torch.cuda.synchronize if lm.device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    w = features.windowed_activations(lm, words, layer, a.context, progress=False)
    sync()
    tw = time.perf_counter() - t0
    nw = words[: a.naive_words or None]
    n_tok_naive = len(features.tokenize_words(nw, lm.tokenizer)[0])
    t0 = time.perf_counter()
    n = features.naive_activations(lm, nw, layer, a.context, progress=False)
    sync()
    tn = time.perf_counter() - t0
    # the first words' windows are the same in both paths (the windows only start to slide later)
    diff = float(np.abs(w["activations"][: len(nw)] - n["activations"]).max())
    scale = float(np.abs(n["activations"]).max())
    print(f"model={lm.name} device={lm.device} dtype={lm.info.get('dtype')} "
          f"cpu_bf16={lm.info.get('cpu_bf16')} fused_gelu={lm.info.get('fused_gelu')} "
          f"threads={torch.get_num_threads()} story={a.story} words={len(words)} tokens={n_tok} "
          f"naive_words={len(nw)} naive_tokens={n_tok_naive} context={a.context} layer={layer}")
    print(f"windowed {tw:.2f} s, naive {tn:.2f} s; largest |activation| {scale:.3g}")
    rw, rn = n_tok / tw, n_tok_naive / tn
    print(f"features: windowed={rw:.1f} naive={rn:.1f} speedup={rw / rn:.1f} "
          f"max_abs_diff={diff:.2e}")


if __name__ == "__main__":
    main()
