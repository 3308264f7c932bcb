"""Tokenising a story's words: one call per word (the reference), one batched call through the
transformers wrapper, and :func:`lib.tokens.tokenize_words` (the fast tokenizer's Rust
``encode_batch`` directly), on the real SmolLM2 tokenizer (committed with its config) and real
transcripts (LeBel stories, concatenated).

    python bench/bench_tokens.py [--story pieman] [--repeat 5]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from transformers import AutoTokenizer

    from lib.tokens import tokenize_words
    from lib.transcripts import read_transcript

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--stories", nargs="*", default=["wheretheressmoke", "adollshouse",
                                                     "becomingindian", "food"])
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(ROOT / "lib/model_configs/smollm2-135m")
    words = [w for s in a.stories for w in read_transcript(
        ROOT / "results/lebel/transcripts" / f"{s}.tsv").word.astype(str).tolist()]
    texts = [(" " if i else "") + w for i, w in enumerate(words)]

    def per_word():
        ids = []
        for i, w in enumerate(words):
            ids += tok((" " if i else "") + w, add_special_tokens=False)["input_ids"]
        return ids

    def best(fn):
        times = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return min(times), out

    t_word, ref = best(per_word)
    t_wrap, wrapped = best(lambda: tok(texts, add_special_tokens=False)["input_ids"])
    t_direct, (ids, _) = best(lambda: tokenize_words(words, tok))
    assert ids.tolist() == ref == [t for w in wrapped for t in w]
    print(f"| {len(words)} words, {len(ref)} tokens | {t_word:.3f} s | {t_wrap:.3f} s | "
          f"{t_direct:.3f} s | identical ids |")


if __name__ == "__main__":
    main()
