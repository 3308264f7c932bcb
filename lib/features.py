"""Stage 03: language-model activations per word.

For every word of a story (stage 02 transcript) the hidden state of one layer (or of every layer
with ``layer="all"``), pooled over the word's sub-word tokens (its last token by default, or the
mean), with a bounded left context.

Context policy (the same for the fast path and the reference): the story's tokens are cut into
overlapping windows of ``context`` tokens that start every ``stride`` tokens
(default ``stride = context // 2``). A word is read from the window in whose last ``stride``
positions its last token falls, so every word sees between ``context - stride`` and ``context``
tokens of left context (all of them near the start of the story). Each token is computed at most
``ceil(context / stride)`` times and windows run in batches -- instead of one forward pass per
word. :func:`naive_activations` computes the same thing one word at a time and is the test
reference.

Every window starts with the model's document-start token (``<|endoftext|>`` where the vocabulary
has it -- GPT-2, SmolLM2 --, else its BOS, else EOS), so no word is ever read at position 0: the
first position of a causal LM is an attention sink with huge activations, and reading the story's
first word there would make an onset regressor. A window is ``context + 1`` positions long.

Cache entries are keyed by the model's fingerprint, layer, context, stride, pooling, the words,
the start token, and the numerical environment (weights' dtype, device kind, torch and
transformers versions): bf16-on-GPU and fp32-on-CPU activations never share an entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .alignment import is_clitic
from .cache import cached_npz, is_fresh, key_of
from .data import DataError
from .models import LoadedModel, ModelError, start_token  # noqa: F401  (re-exported)
from .paths import Paths
from .tokens import plan_windows, tokenize_words  # noqa: F401  (re-exported)

FEATURES_VERSION = 2


def numerics(model: LoadedModel) -> dict:
    """What decides the activations' numbers besides the weights (part of the cache key)."""
    import torch
    import transformers

    p = next(model.model.parameters())
    return {"dtype": str(p.dtype).replace("torch.", ""), "device": p.device.type,
            "torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
            "start_token": start_token(model.tokenizer),
            "fused_gelu": bool(model.info.get("fused_gelu")),
            "cpu_bf16": bool(model.info.get("cpu_bf16"))}


def _check(model: LoadedModel, layer, context: int, pooling: str) -> list[int]:
    if pooling not in ("last", "mean"):
        raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
    if context < 2:
        raise ValueError(f"context must be >= 2 tokens, got {context}")
    if context + 1 > model.max_positions:
        raise ModelError(f"context of {context} tokens (+1 start token) exceeds {model.name}'s "
                         f"maximum of {model.max_positions} positions")
    if layer == "all":
        return list(range(model.n_layers + 1))
    layer = int(layer)
    if not 0 <= layer <= model.n_layers:
        raise ModelError(f"layer {layer} is out of range for {model.name}, which has "
                         f"{model.n_layers} layers (0 = embeddings .. {model.n_layers})")
    return [layer]


class _Stop(Exception):
    """Raised by a hook once the deepest requested layer is computed."""


def decoder_blocks(model: LoadedModel):
    """The model's list of transformer blocks (GPT-2 ``transformer.h``, Llama-style
    ``model.layers``, or the first ModuleList with one entry per layer)."""
    import torch

    m = model.model
    for path in ("transformer.h", "model.layers", "gpt_neox.layers", "model.decoder.layers"):
        obj = m
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList) and len(obj) == model.n_layers:
            return obj
    for mod in m.modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == model.n_layers:
            return mod
    raise ModelError(f"{model.name}: cannot find its {model.n_layers} transformer blocks")


def _batch_ids(model: LoadedModel, batch: list[np.ndarray]):
    import torch

    T = max(len(b) for b in batch)
    ids = np.full((len(batch), T), model.tokenizer.pad_token_id or 0, dtype=np.int64)
    att = np.zeros((len(batch), T), dtype=np.int64)
    for i, b in enumerate(batch):
        ids[i, :len(b)], att[i, :len(b)] = b, 1
    return (torch.from_numpy(ids).to(model.device), torch.from_numpy(att).to(model.device))


def _forward(model: LoadedModel, batch: list[np.ndarray], layers: list[int],
             logits: bool = False):
    """Hidden states (n_layers_kept, batch, T, d), a float32 tensor on the model's device, for
    right-padded sequences (causal: padding after a token cannot change it), and
    log-probabilities (batch, T, vocab), also on the device, with ``logits``.

    Without logits, and when every requested layer lies below the last, the forward pass stops
    right after the deepest requested block (hooks on the blocks; no later block and no LM head
    runs): layer 8 of SmolLM2's 30 costs about a quarter of a full pass. The last layer and
    ``logits`` take the full pass (the last hidden state is HF's, after the final norm).
    """
    import torch

    ids, att = _batch_ids(model, batch)
    deepest = max(layers)
    final_norm = _final_norm(model) if deepest >= model.n_layers and not logits else None
    with torch.inference_mode(), _autocast_cpu(model):
        if logits or (deepest >= model.n_layers and final_norm is None):
            out = model.model(input_ids=ids, attention_mask=att, output_hidden_states=True,
                              use_cache=False)
            hs = torch.stack([out.hidden_states[l] for l in layers]).float()
            lp = torch.log_softmax(out.logits.float(), -1) if logits else None
            return hs, lp
        got: dict[int, object] = {}
        blocks = decoder_blocks(model)
        hooks = []

        def keep(layer):
            def hook(_mod, _args, output):
                got[layer] = output[0] if isinstance(output, (tuple, list)) else output
                if layer == deepest:
                    raise _Stop
            return hook

        def embeddings(_mod, args, kwargs):   # layer 0: what enters the first block
            got[0] = args[0] if args else kwargs["hidden_states"]
            if deepest == 0:
                raise _Stop

        if 0 in layers:
            hooks.append(blocks[0].register_forward_pre_hook(embeddings, with_kwargs=True))
        for l in sorted(set(layers) - {0, model.n_layers}):
            hooks.append(blocks[l - 1].register_forward_hook(keep(l)))
        if final_norm is not None:   # the last layer as HF reports it: after the final norm
            hooks.append(final_norm.register_forward_hook(keep(model.n_layers)))
        try:
            model.model(input_ids=ids, attention_mask=att, use_cache=False)
        except _Stop:
            pass
        finally:
            for h in hooks:
                h.remove()
        hs = torch.stack([got[l] for l in layers]).float()
    return hs, None


def _final_norm(model: LoadedModel):
    """The norm after the last block (GPT-2 ``transformer.ln_f``, Llama-style ``model.norm``):
    hooking it gives the last layer without running the LM head (a 49k-word projection of every
    token for SmolLM2, about a fifth of a full pass). None when the model has no such module."""
    m = model.model
    for path in ("transformer.ln_f", "model.norm", "gpt_neox.final_layer_norm"):
        obj = m
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    return None


def _autocast_cpu(model: LoadedModel):
    """bf16 autocast when the model asks for it on a CPU (``info["cpu_bf16"]``), else nothing."""
    import contextlib

    import torch

    if model.device == "cpu" and model.info.get("cpu_bf16"):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _pool(h: np.ndarray, a: int, b: int, pooling: str) -> np.ndarray:
    """h: (L, T, d); word tokens [a, b) in window coordinates (the reference's pooling)."""
    return h[:, b - 1] if pooling == "last" else h[:, a:b].mean(1)


def _next_token_logprobs(lp, seqs: list[np.ndarray]) -> np.ndarray:
    """(batch, T - 1) log p of each sequence's token q + 1 at position q, gathered on the
    device (the (batch, T, vocab) log-probabilities never leave it)."""
    import torch

    T = lp.shape[1]
    nxt = np.zeros((len(seqs), T - 1), np.int64)
    for j, s in enumerate(seqs):
        nxt[j, :len(s) - 1] = s[1:]
    idx = torch.as_tensor(nxt, device=lp.device)[..., None]
    return torch.gather(lp[:, :-1], 2, idx)[..., 0].cpu().numpy()


def _pool_batch(hs, win, a, b, pooling: str):
    """Every word of a batch pooled on the device in one gather: hs (L, batch, T, d) tensor;
    word k lies in window ``win[k]`` at tokens [a[k], b[k]) -> (L, words, d) numpy, one
    transfer. ``mean`` takes differences of cumulative sums over T (no per-word slicing)."""
    import torch

    dev = hs.device
    win, a, b = (torch.as_tensor(np.asarray(v), device=dev) for v in (win, a, b))
    if pooling == "last":
        return hs[:, win, b - 1].cpu().numpy()
    cs = torch.cumsum(hs, dim=2)
    upto = cs[:, win, b - 1]
    before = torch.where((a > 0)[None, :, None], cs[:, win, (a - 1).clamp(min=0)],
                         torch.zeros_like(upto))
    return ((upto - before) / (b - a).to(hs.dtype)[None, :, None]).cpu().numpy()


def _plan(model: LoadedModel, words: list[str], layer, context: int, stride: int | None,
          pooling: str):
    """Shared by the fast path and the reference: tokens, word spans and each word's window."""
    layers = _check(model, layer, context, pooling)
    stride = stride or max(1, context // 2)
    ids, ends = tokenize_words(words, model.tokenizer)
    starts_tok = np.concatenate([[0], ends[:-1]])
    starts, owner = plan_windows(len(ids), context, stride)
    word_win = owner[ends - 1]
    if np.any(starts_tok < word_win):
        bad = int(np.flatnonzero(starts_tok < word_win)[0])
        raise DataError(f"word {bad} ({words[bad]!r}) has more tokens than fit in a window "
                        f"stride; raise context or lower stride")
    out = np.zeros((len(layers), len(words), model.model.config.hidden_size), np.float32)
    return layers, ids, ends, starts_tok, starts, word_win, out


def windowed_activations(model: LoadedModel, words: list[str], layer=8, context: int = 256,
                         stride: int | None = None, pooling: str = "last", batch_size: int = 8,
                         progress: bool = True, surprisal: bool = False
                         ) -> dict[str, np.ndarray]:
    """Activations (n_words, d) -- or (n_layers+1, n_words, d) for ``layer="all"``. With
    ``surprisal``, also each word's surprisal in nats (-sum of log p over its sub-word tokens,
    each predicted from the same window), from the same forward pass."""
    layers, ids, ends, starts_tok, starts, word_win, out = _plan(model, words, layer, context,
                                                                 stride, pooling)
    by_window = {s: np.flatnonzero(word_win == s) for s in starts}
    todo = [s for s in starts if len(by_window[s])]
    bos = [start_token(model.tokenizer)]
    sur = np.zeros(len(words), np.float32)
    for i in tqdm(range(0, len(todo), batch_size), desc=f"activations {model.tag}",
                  disable=not progress, leave=False):
        chunk = todo[i:i + batch_size]
        seqs = [np.r_[bos, ids[s:s + context]] for s in chunk]
        hs, lp = _forward(model, seqs, layers, logits=surprisal)
        wins = [np.full(len(by_window[s]), j) for j, s in enumerate(chunk)]
        words_in = np.concatenate([by_window[s] for s in chunk])
        offset = np.concatenate([np.full(len(by_window[s]), s) for s in chunk])
        a, b = starts_tok[words_in] - offset + 1, ends[words_in] - offset + 1   # +1: start token
        out[:, words_in] = _pool_batch(hs, np.concatenate(wins), a, b, pooling)
        if surprisal:               # token at position q is predicted at q - 1
            tok_lp = _next_token_logprobs(lp, seqs)
            for j, s in enumerate(chunk):
                for w in by_window[s]:
                    q = np.arange(starts_tok[w] - s + 1, ends[w] - s + 1)
                    sur[w] = -tok_lp[j, q - 1].sum()
    res = {"activations": out if layer == "all" else out[0],
           "n_tokens": (ends - starts_tok).astype(np.int32),
           "context_start": word_win.astype(np.int64), "layers": np.asarray(layers)}
    if surprisal:
        res["surprisal"] = sur
    return res


def naive_activations(model: LoadedModel, words: list[str], layer=8, context: int = 256,
                      stride: int | None = None, pooling: str = "last",
                      progress: bool = False) -> dict[str, np.ndarray]:
    """Reference: one forward pass per word over exactly the same context as the windowed path."""
    layers, ids, ends, starts_tok, _, word_win, out = _plan(model, words, layer, context, stride,
                                                            pooling)
    import torch

    bos = [start_token(model.tokenizer)]
    for w in tqdm(range(len(words)), desc="naive", disable=not progress, leave=False):
        s = word_win[w]
        ids_t, att = _batch_ids(model, [np.r_[bos, ids[s:ends[w]]]])
        with torch.inference_mode():   # the full model, every layer: the reference
            hs = model.model(input_ids=ids_t, attention_mask=att, output_hidden_states=True,
                             use_cache=False).hidden_states
        h = torch.stack([hs[l] for l in layers]).float().cpu().numpy()
        out[:, w] = _pool(h[:, 0], starts_tok[w] - s + 1, ends[w] - s + 1, pooling)
    return {"activations": out if layer == "all" else out[0]}


def cache_folder(model: LoadedModel) -> str:
    """``<model_tag>-<fingerprint>``: the folder of a model's cached features. The weights'
    fingerprint is in the name, so two models that share a tag (a name reused for other
    weights) never overwrite each other's files."""
    return f"{model.tag}-{model.fingerprint[:8]}"


def activations_path(root: Path, tag: str, story: str, layer, context: int, pooling: str,
                     env: dict | None = None) -> Path:
    """``<root>/<tag>/<story>_layer-<L>_ctx-<C>_<pooling>[_<dtype>-<device>].npz``, ``tag``
    being :func:`cache_folder`."""
    num = f"_{_numerics_tag(env)}" if env else ""
    return Path(root) / tag / f"{story}_layer-{layer}_ctx-{context}_{pooling}{num}.npz"


def surprisal_path(root: Path, tag: str, story: str, context: int, env: dict) -> Path:
    return Path(root) / tag / f"{story}_surprisal_ctx-{context}_{_numerics_tag(env)}.npz"


def _numerics_tag(env: dict) -> str:
    """``<dtype>[+bf16]-<device>`` of :func:`numerics`: the part of a cache file's name that
    keeps different numerics apart."""
    return f"{env['dtype']}{'+bf16' if env.get('cpu_bf16') else ''}-{env['device']}"


def story_activations(model: LoadedModel, transcript: pd.DataFrame, story: str, cache_root: Path,
                      layer=8, context: int = 256, stride: int | None = None,
                      pooling: str = "last", batch_size: int = 8,
                      column: str = "text", surprisal: bool = False
                      ) -> tuple[dict[str, np.ndarray], bool, Path]:
    """Cached activations for one story. Returns (arrays, cache_hit, path).

    Keyed by the model's fingerprint, layer, context, stride, pooling, the transcript's words and
    :func:`numerics` (dtype, device kind, library versions, start token);
    stored at :func:`activations_path` (dtype and device in the name) with a JSON sidecar. A corrupt entry (bytes not matching the sidecar's hash) is recomputed.
    """
    words = transcript[column].astype(str).tolist()
    if not words:
        raise DataError(f"empty transcript for story {story!r}")
    stride = stride or max(1, context // 2)

    env = numerics(model)

    # Words with split-off clitics are tokenised as running text since version 2's caches were
    # written: only those transcripts' tokens changed, so only their keys name the rule (no
    # shipped transcript has one; tests/test_features.py checks that their tokens are unchanged).
    rule = ["clitics as running text"] if any(map(is_clitic, words[1:])) else []

    def key_for(lay):
        return key_of(FEATURES_VERSION, model.fingerprint, str(lay), context, stride, pooling,
                      words, env, *rule)

    path = activations_path(cache_root, cache_folder(model), story, layer, context, pooling, env)
    compute = lambda: windowed_activations(model, words, layer, context, stride, pooling, batch_size)
    if surprisal:
        sur_path = surprisal_path(cache_root, cache_folder(model), story, context, env)
        if not is_fresh(sur_path, key_for("surprisal")):
            both = windowed_activations(model, words, layer, context, stride, pooling,
                                        batch_size, surprisal=True)   # one pass for both
            cached_npz(sur_path, key_for("surprisal"), lambda: {"surprisal": both["surprisal"]},
                       model=model.name, model_tag=model.tag, fingerprint=model.fingerprint,
                       story=story, context=context, **env)
            compute = lambda: {k: v for k, v in both.items() if k != "surprisal"}
    all_path = activations_path(cache_root, cache_folder(model), story, "all", context, pooling, env)
    if layer != "all" and is_fresh(all_path, key_for("all")):
        def compute():  # every layer is cached already: slice it instead of running the model
            with np.load(all_path) as z:
                d = {k: z[k] for k in z.files}
            d["activations"] = d["activations"][list(d["layers"]).index(int(layer))]
            d["layers"] = np.asarray([int(layer)])
            return d
    arrays, hit = cached_npz(path, key_for(layer), compute,
                             model=model.name, model_tag=model.tag, fingerprint=model.fingerprint,
                             story=story, layer=str(layer), context=context, stride=stride,
                             pooling=pooling, n_words=len(words), **env)
    return arrays, hit, path


# --------------------------------------------------------------------------- stage runner
INDEX_COLUMNS = ["condition", "story", "seed", "model", "model_tag", "fingerprint", "path",
                 "all_layers_path", "surprisal_path", "leaky", "cache_hit", "fold", "subjects"]


def extract_for(model: LoadedModel, stories: list[str], transcripts_dir: Path, cache_root: Path,
                condition: str, seed: int = 0, leaky: bool = False, all_layers: bool = False,
                surprisal: bool = False, **kw) -> list[dict]:
    """Activations of ``model`` for ``stories``; rows for the activations index. With
    ``all_layers`` every layer is extracted too (for the layer profile); with ``surprisal`` each
    word's surprisal under the model is saved as well (same pass as the activations)."""
    from .transcripts import read_transcript

    rows = []
    for story in stories:
        tr = read_transcript(Path(transcripts_dir) / f"{story}.tsv")
        all_path = ""
        if all_layers:
            all_path = Paths.rel(story_activations(model, tr, story, cache_root,
                                                   **{**kw, "layer": "all"})[2])
        _, hit, path = story_activations(model, tr, story, cache_root, surprisal=surprisal, **kw)
        sur = Paths.rel(surprisal_path(cache_root, cache_folder(model), story, kw.get("context", 256),
                                       numerics(model))) if surprisal else ""
        rows.append(dict(condition=condition, story=story, seed=seed, model=model.name,
                         model_tag=model.tag, fingerprint=model.fingerprint,
                         path=Paths.rel(path), all_layers_path=all_path, surprisal_path=sur,
                         leaky=leaky, cache_hit=hit))
    return rows


@dataclass(frozen=True)
class ExtractUnit:
    """Activations of one model for some stories: plain data, so the same unit runs here or on
    a Dask worker (a GPU one when the cluster has them). ``model`` is any name load_model takes."""
    model: str
    condition: str
    stories: tuple
    transcripts_dir: str
    cache_root: str
    seed: int = 0
    leaky: bool = False
    device: str = "auto"
    options: tuple = ()       # extract_for keywords as (key, value) pairs
    cpu_bf16: bool = False
    fold: str = ""            # a fine-tuned model's fold, and the subjects it alone scores
    subjects: tuple = ()      # (empty: the model serves every subject of its stories)


_LOADED: dict = {}   # the last model extract_unit loaded in this process, by how it was loaded


def _unit_model(unit: ExtractUnit) -> LoadedModel:
    """The unit's model, reused from the previous unit when it names the same model, device and
    numerics: stage 03 runs one unit per story, and a load costs 0.4 s (a converted model) to
    3.4 s (a random-init baseline, which initialises 135M weights twice); lebel's stage 03 took
    149 s instead of 174 s (docs/benchmarks.md). Extraction never changes a model (eval mode, hooks removed)."""
    from .models import load_model

    d = Path(unit.model)   # a model folder is keyed by its files too: it may be retrained
    stamp = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size)
                  for f in sorted(d.iterdir()) if f.is_file()) if d.is_dir() else ()
    key = (unit.model, unit.device, unit.cpu_bf16, stamp)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = load_model(unit.model, device=unit.device, cpu_bf16=unit.cpu_bf16)
    return _LOADED[key]


def extract_unit(_job, unit: ExtractUnit) -> list[dict]:
    lm = _unit_model(unit)
    rows = extract_for(lm, list(unit.stories), Path(unit.transcripts_dir), Path(unit.cache_root),
                       unit.condition, seed=unit.seed, leaky=unit.leaky, **dict(unit.options))
    return [{**r, "fold": unit.fold, "subjects": ",".join(unit.subjects)} for r in rows]


def run_extraction(units: list[ExtractUnit], client=None, progress: bool = True) -> pd.DataFrame:
    """Every unit's activations (serially, or on a Dask ``client``) -> the activations index."""
    from .cluster import gpu_resources, map_units

    rows = map_units(extract_unit, None, units, client=client, desc="activations",
                     progress=progress, resources=gpu_resources(client))
    return pd.DataFrame([r for rs in rows for r in rs], columns=INDEX_COLUMNS)


def read_index(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: activations index not found (run stages 03 and 04 first)")
    df = pd.read_csv(path, keep_default_na=False)
    for c in INDEX_COLUMNS:
        if c not in df:
            df[c] = ""
    for c in ("leaky", "cache_hit"):
        df[c] = df[c].astype(str).str.lower().isin(["true", "1"])
    return df


@dataclass
class FeatureMaps:
    """The activations index as lookups: ``(condition, seed) -> {story key: path}`` for the
    layer's activations, every layer and surprisal, the model tags, and ``subject_fold``. A
    fine-tuned model that scores only some subjects (:func:`lib.sft.plan_folds` by subject
    story sets) keys its stories ``story@fold``; :func:`story_path` picks the subject's own.
    ``tags`` names one model per (condition, seed): with fold models, the last fold's."""
    features: dict
    all_layers: dict
    surprisal: dict
    tags: dict
    subject_fold: dict

    @classmethod
    def of(cls, index: pd.DataFrame) -> "FeatureMaps":
        feats, layers, sur, tags, sub_fold = {}, {}, {}, {}, {}
        for r in index.itertuples():
            k = (r.condition, int(r.seed))
            subs = [s for s in str(getattr(r, "subjects", "") or "").split(",") if s]
            key = f"{r.story}@{r.fold}" if subs else r.story
            for s in subs:
                if sub_fold.setdefault(s, r.fold) != r.fold:
                    raise DataError(f"{s} is scored by two fold models ({sub_fold[s]}, {r.fold})")
            feats.setdefault(k, {})[key] = r.path
            tags[k] = r.model_tag
            if getattr(r, "all_layers_path", ""):
                layers.setdefault(k, {})[key] = r.all_layers_path
            if getattr(r, "surprisal_path", ""):
                sur.setdefault(k, {})[key] = r.surprisal_path
        return cls(feats, layers, sur, tags, sub_fold)


def story_path(paths: dict, story: str, fold: str | None) -> str | None:
    """A story's file for a subject of ``fold``: its fold model's, else the shared one."""
    return paths.get(f"{story}@{fold}") or paths.get(story) if fold else paths.get(story)


def load_activations(path: str | Path) -> np.ndarray:
    with np.load(path) as z:
        return z["activations"]
