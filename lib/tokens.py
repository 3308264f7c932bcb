"""Story text -> token ids: each word's token span, and the overlapping windows that extraction
reads them from (:mod:`lib.features`)."""
from __future__ import annotations

import numpy as np

from .alignment import is_clitic, join_words
from .errors import DataError


def tokenize_words(words: list[str], tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of the story and, per word, the index one past its last token.

    Words are tokenised one by one with a leading space (except the first), which for GPT-2-style
    BPE gives the same tokens as tokenising the joined text, and keeps word boundaries exact.
    A word table that splits clitics off the word before them (``do n't``, ``it 's``;
    :data:`lib.alignment.CLITICS`) is tokenised as running text instead (``don't``, what the model
    was trained on): BPE merges across that boundary (`` don`` + ``'t``), so a word ends at the
    first token that reaches its last character.
    """
    if len(words) == 0:
        raise DataError("empty transcript: no words to extract activations for")
    if any(map(is_clitic, words[1:])):
        return _tokenize_running_text(words, tokenizer)
    per_word = _encode_batch([(" " if i else "") + str(w) for i, w in enumerate(words)],
                             tokenizer)
    empty = [i for i, t in enumerate(per_word) if not t]
    if empty:
        raise DataError(f"word {empty[0]} ({words[empty[0]]!r}) tokenises to nothing")
    ends = np.cumsum([len(t) for t in per_word])
    ids = [t for word in per_word for t in word]
    return np.asarray(ids, dtype=np.int64), ends.astype(np.int64)


def _encode_batch(texts: list[str], tokenizer) -> list[list[int]]:
    """Token ids of each text, as ``tokenizer(text, add_special_tokens=False)`` gives them
    (tested). A fast tokenizer's Rust ``encode_batch`` is called directly: through the
    transformers wrapper, converting each of 8,000 encodings to a dict took 0.25 s against 0.03 s
    for the encoding itself, most of an extraction's host time on a GPU (docs/benchmarks.md).
    The wrapper is used when the tokenizer is slow, or its backend was left truncating or
    padding."""
    backend = getattr(tokenizer, "backend_tokenizer", None) \
        if getattr(tokenizer, "is_fast", False) else None
    if backend is not None and backend.truncation is None and backend.padding is None:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _tokenize_running_text(words: list[str], tokenizer) -> tuple[np.ndarray, np.ndarray]:
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("words with split-off clitics need a fast tokenizer (token offsets)")
    enc = tokenizer(join_words(words), add_special_tokens=False, return_offsets_mapping=True)
    word_end, pos = [], 0
    for i, w in enumerate(map(str, words)):
        pos += len(w) + (1 if i and not is_clitic(w) else 0)
        word_end.append(pos)
    tok_end = np.asarray([b for _, b in enc["offset_mapping"]])
    ends = np.searchsorted(tok_end, word_end, side="left") + 1
    same = np.flatnonzero(np.diff(ends) <= 0)
    if len(same):
        i = int(same[0]) + 1
        raise DataError(f"word {i} ({words[i]!r}) shares its last token with the word before it")
    return np.asarray(enc["input_ids"], dtype=np.int64), ends.astype(np.int64)


def plan_windows(n_tokens: int, context: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Window starts, and for each token the start of the window it is read from."""
    if stride < 1 or stride > context:
        raise ValueError(f"stride must be in 1..context ({context}), got {stride}")
    starts = [0]
    while starts[-1] + context < n_tokens:
        starts.append(starts[-1] + stride)
    starts = np.asarray(starts)
    owner_start = np.zeros(n_tokens, dtype=np.int64)
    for s in starts[1:]:  # token j belongs to the last window whose end covers it
        owner_start[s + context - stride: s + context] = s
    # tokens beyond the last window's "new" part (short tail) stay with the last window
    last = starts[-1]
    owner_start[max(0, last + context - stride if len(starts) > 1 else 0):] = last
    owner_start[:min(context, n_tokens)] = 0
    return starts, owner_start
