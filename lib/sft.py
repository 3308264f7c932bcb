"""Stage 04: supervised (causal-LM) fine-tuning on Narratives text, without leakage.

The question is whether fine-tuning on *story text* changes brain scores, so the model that scores
a story must not have been trained on that story:

* ``heldout`` (default): cross-fitting. One model per set of stories that subjects heard: it
  trains on every other corpus story and scores all of those subjects' stories, so each subject's
  fit uses one model that never saw any of its stories (:mod:`lib.sft_folds`). Stories whose text
  overlaps a held-out story (near-duplicates such as pieman / piemanpni, >5% shared word 4-grams)
  are held out with it.
* ``leaky``: one model on every story, scored stories included, labelled ``-leaky`` everywhere
  it appears (``sft-leaky``, ``control-leaky``, ...).

Two controls get the same budget (steps x batch x block) as ``sft``, seeded with the run's seed:

* ``control``: the training stories' words shuffled within each utterance (corpus line): same
  vocabulary and topics, no syntax -- "any extra training" vs "training on language";
* ``scrambled``: the training stories' utterances shuffled across all training stories: grammar
  and vocabulary kept, narrative content destroyed -- so ``sft - scrambled`` asks what *narrative*
  adds, and does not merely measure damage done to a word-shuffled control.

Training records train loss per step and validation loss / perplexity on the held-out stories
before and after, writes checkpoints, resumes from the last one, and saves the model with
``sft_config.json`` saying how it was made.
"""
from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .cache import array_hash, key_of, write_csv, write_json
from .data import DataError
from .models import LoadedModel, load_model
from .paths import Paths
from .sft_folds import (OVERLAP_THRESHOLD, check_no_leak, overlap,  # noqa: F401  (re-exported)
                        plan_folds)

@dataclass
class SFTConfig:
    base_model: str = "smollm2-135m"
    steps: int = 40
    lr: float = 5e-5
    batch_size: int = 4
    block_size: int = 128
    seed: int = 0
    method: str = "full"           # "full" or "lora"
    lora_r: int = 8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    checkpoint_every: int = 100    # a checkpoint costs ~3x the model size of disk writes
    eval_blocks: int = 16          # validation blocks per held-out story set (first N, fixed)
    precision: str = "auto"        # training arithmetic: fp32 | bf16 | auto (:func:`precision`)
    snapshots: tuple = ()          # steps before ``steps`` at which the model is also saved
    device: str | None = None

    def key(self, train_text_hash: str, kind: str) -> str:
        d = asdict(self)
        d.pop("device")
        d.pop("checkpoint_every")
        if not d["snapshots"]:     # keys of runs without snapshots are unchanged
            d.pop("snapshots")
        else:
            d["snapshots"] = sorted(int(k) for k in d["snapshots"])
        # 5: the precision asked for is in the key (pinned fp32 and bf16 models never share an
        # entry; "auto" models are reused whatever precision they resolved to, which they record)
        # 4: fused AdamW (3: bf16 blocks)
        return key_of("sft", 5, d, train_text_hash, kind)


# --------------------------------------------------------------------------- control text
CONTROLS = ("control", "scrambled")


def _rng(seed: int, *salt) -> np.random.Generator:
    return np.random.default_rng([int(seed)] + [int(key_of(x)[:8], 16) for x in salt])


def _units(text: str) -> list[str]:
    """Utterance lines; a text without line breaks falls back to sentences, then 20-word chunks."""
    lines = [ln for ln in text.strip().split("\n") if ln.strip()]
    if len(lines) > 1:
        return lines
    out = []
    for sent in re.split(r"(?<=[.!?])\s+", text.strip()):
        w = sent.split()
        out += [" ".join(w[i:i + 20]) for i in range(0, len(w), 20)]
    return out


def control_text(text: str, seed: int = 0, story: str = "") -> str:
    """Same words, order shuffled within each utterance (seeded by the run seed and story)."""
    rng = _rng(seed, "control", story)
    out = []
    for u in _units(text):
        w = u.split()
        rng.shuffle(w)
        out.append(" ".join(w))
    return "\n".join(out)


def scrambled_texts(texts: dict[str, str], seed: int = 0) -> dict[str, str]:
    """Every utterance of every training story, shuffled across stories (seeded by the run seed),
    as one text: grammar kept, narrative gone."""
    rng = _rng(seed, "scrambled")
    lines = [u for s in sorted(texts) for u in _units(texts[s])]
    order = rng.permutation(len(lines))
    return {"scrambled": "\n".join(lines[i] for i in order)}


def condition_name(kind: str, leaky: bool) -> str:
    """The label a model's activations and scores carry (``sft``, ``control-leaky``, ...)."""
    return f"{kind}-leaky" if leaky else kind


# --------------------------------------------------------------------------- blocks
def make_blocks(texts: list[str], tokenizer, block_size: int, source: str = "training text"
                ) -> np.ndarray:
    """Blocks in the extraction format: the texts concatenated (EOS between), cut into pieces of
    ``block_size`` tokens, each after the start token that begins every extraction window
    (:func:`lib.features.start_token`) -> (n_blocks, block_size + 1) token ids. With
    ``block_size`` = the extraction context, every position a feature is read at (1..context,
    after the start token) is a position fine-tuning trained."""
    from .models import start_token
    from .transcripts import flatten

    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for t in texts:
        ids.extend(tokenizer(flatten(t), add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    n = len(ids) // block_size
    if n < 1:
        raise DataError(f"{source}: {len(ids)} tokens is shorter than one block of {block_size}")
    body = np.asarray(ids[:n * block_size], dtype=np.int64).reshape(n, block_size)
    return np.hstack([np.full((n, 1), start_token(tokenizer), np.int64), body])


def trained_positions(block_size: int) -> np.ndarray:
    """Positions a block of :func:`make_blocks` trains: the start token's (0) and every token's
    after it (1..block_size)."""
    return np.arange(block_size + 1)


def eval_loss(model: LoadedModel, blocks: np.ndarray, batch_size: int = 8) -> float:
    """Mean causal-LM loss over ``blocks``, in fp32 on every device: a measurement, so that
    the validation losses and perplexities of models trained on different machines compare
    (bf16 autocast moved SmolLM2's loss on the same text by 2e-4)."""
    import torch

    if len(blocks) == 0:
        return float("nan")
    m = model.model
    was = m.training
    m.eval()
    tot, n = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(blocks), batch_size):
            x = torch.from_numpy(blocks[i:i + batch_size]).to(model.device)
            loss = m(input_ids=x, labels=x).loss
            tot += float(loss) * len(x)
            n += len(x)
    m.train(was)
    return tot / n


_BASE_LOSS: dict = {}


def _base_loss(cfg: SFTConfig, lm: LoadedModel, blocks: np.ndarray) -> float:
    """Validation loss of the model before training, computed once per process for the same
    base model, device, method and validation blocks: sft and its controls share it (one
    evaluation instead of three)."""
    key = (lm.fingerprint, lm.device, cfg.method, array_hash(blocks))
    if key not in _BASE_LOSS:
        _BASE_LOSS[key] = eval_loss(lm, blocks)
    return _BASE_LOSS[key]


PRECISIONS = ("auto", "fp32", "bf16")


def precision(asked: str, device: str) -> str:
    """The training arithmetic for ``asked`` on ``device``: ``fp32``, or ``bf16`` mixed
    precision (fp32 weights and optimizer, bf16 matrix products). ``auto`` takes bf16 where the
    hardware has it (a GPU that supports it; a CPU with AVX-512 bf16 or AMX instructions:
    measured 2.9 vs 4.4 s per 514-token SmolLM2 step on 2 cores, docs/benchmarks.md) and fp32
    elsewhere, so the same profile trains slightly different models on different machines:
    each model records the precision it was trained in. Pin ``fp32`` to train the same model
    everywhere."""
    import torch

    if asked not in PRECISIONS:
        raise ValueError(f"sft precision must be one of {PRECISIONS}, got {asked!r}")
    has = (torch.cuda.is_bf16_supported() if device == "cuda" else
           _cpu_has_bf16() if device == "cpu" else False)
    if asked == "bf16" and not has:
        raise ValueError(f"sft precision 'bf16' asked, but this {device} has no bf16 arithmetic "
                         f"(emulated bf16 is slower than fp32): use 'fp32' or 'auto'")
    return "bf16" if asked == "bf16" or (asked == "auto" and has) else "fp32"


def _autocast(device: str, prec: str):
    """bf16 autocast for ``prec == "bf16"``, else nothing (fp32)."""
    import contextlib
    import torch

    if prec == "bf16":
        return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def deterministic(device: str):
    """Within: deterministic torch algorithms, so reruns give the same weights (an error, not a
    warning, on CUDA where an operation has none), with cuBLAS's fixed workspace (set at import
    by lib.models, before cuBLAS's first use; CUDA's reproducibility notes). On the CPU an
    operation without a deterministic kernel only warns (none of fine-tuning's has been seen
    to). The previous settings come back on exit: extraction and fits run as they were."""
    import os

    import torch

    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    if device == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=device != "cuda")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def deterministic_attention(device: str):
    """The attention kernels of a training step on CUDA: the math backend of scaled dot-product
    attention, whose backward is deterministic (the fused cuDNN and memory-efficient backwards
    are not); elsewhere nothing. Its cost is measured by bench/gpu_check.py."""
    if device != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def _cpu_has_bf16() -> bool:
    """AVX-512 bf16 or AMX on this CPU (elsewhere bf16 autocast is emulated and slower)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


# --------------------------------------------------------------------------- training
def _optimise(cfg: SFTConfig, lm: LoadedModel):
    """(model, trainable parameters, optimizer, schedule): the full model, or LoRA adapters."""
    import torch

    model = lm.model
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r,
                                                 target_modules="all-linear",
                                                 lora_dropout=0.0, task_type="CAUSAL_LM"))
        lm.model = model
    elif cfg.method != "full":
        raise ValueError(f"method must be 'full' or 'lora', got {cfg.method!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel over all parameters, where torch has it for the device. Measured on
    # 2 CPU cores, SmolLM2-135M: 0.09 s per step instead of 0.32 s, and 0.2 s instead of 3.8 s
    # on the first step, which allocates the state (docs/benchmarks.md)
    fused = lm.device in ("cpu", "cuda")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)) if cfg.warmup_steps else 1.0)
    return model, params, opt, sched


def _resume(ckpt: Path, key: str, device: str, model, opt, sched, val_before: float):
    """(step, history, val_before) from a checkpoint of this training key, else a fresh start."""
    import torch

    if (ckpt / "state.pt").exists():
        state = torch.load(ckpt / "state.pt", map_location=device, weights_only=False)
        if state.get("key") == key:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            return state["step"], state["history"], state["val_before"]
    return 0, [], val_before


def snapshot_dir(out_dir: str | Path, step: int) -> Path:
    """Where the model after ``step`` optimiser steps of the run saved at ``out_dir`` lives."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f"{out_dir.name}_step{int(step):05d}")


def _snapshot_ok(out_dir: Path, step: int, key: str) -> dict | None:
    """The record of a finished snapshot of this training key, else None."""
    f = snapshot_dir(out_dir, step) / "sft_config.json"
    try:
        meta = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("key") == key and meta.get("step") == int(step) else None


def _save_snapshot(cfg: SFTConfig, lm: LoadedModel, model, out_dir: Path, step: int, key: str,
                   history: list[dict], n_blocks: int, ev: np.ndarray, config: dict) -> None:
    """The model after ``step`` steps, as a model directory of its own (written beside, renamed),
    with its validation loss measured in fp32 like the final model's."""
    if _snapshot_ok(out_dir, step, key):
        return
    val = eval_loss(lm, ev)
    metrics = dict(step=int(step), train_tokens_seen=int(step * cfg.batch_size * (cfg.block_size + 1)),
                   epochs=float(step * cfg.batch_size / n_blocks), val_loss_after=val,
                   val_ppl_after=math.exp(val) if np.isfinite(val) else float("nan"))
    _write_model(lm, model, snapshot_dir(out_dir, step), history,
                 {**config, "key": key, "step": int(step), "metrics": metrics})


def _steps(cfg: SFTConfig, lm: LoadedModel, opt_parts, blocks: np.ndarray, order: np.ndarray,
           start: tuple, key: str, ckpt: Path, bar, prec: str, snapshot=None) -> list[dict]:
    """The optimiser steps from ``start`` = (step, history, val_before), checkpointing every
    ``cfg.checkpoint_every`` and calling ``snapshot(step, history)`` after each step of
    ``cfg.snapshots``; returns the history of train losses."""
    import torch

    model, params, opt, sched = opt_parts
    step, history, val_before = start
    model.train()
    while step < cfg.steps:
        idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        x = torch.from_numpy(blocks[idx]).to(lm.device)
        with _autocast(lm.device, prec), deterministic_attention(lm.device):
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        history.append({"step": step, "train_loss": float(loss.detach())})
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        if snapshot is not None and step in cfg.snapshots:
            snapshot(step, history)
            model.train()
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            ckpt.mkdir(parents=True, exist_ok=True)
            tmp = ckpt / "state.pt.part"
            torch.save({"key": key, "model": model.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "step": step, "history": history,
                        "val_before": val_before}, tmp)
            tmp.replace(ckpt / "state.pt")
    return history


def _finished(cfg: SFTConfig, out_dir: Path, key: str) -> dict | None:
    """The metrics of a finished model of this training key with all its snapshots, else None
    (after checking the snapshot steps)."""
    bad = [k for k in cfg.snapshots if not 0 < int(k) < cfg.steps]
    if bad:
        raise ValueError(f"snapshot steps {bad} are not between 0 and the {cfg.steps} steps")
    if cfg.snapshots and cfg.method != "full":
        raise ValueError("snapshots are saved for full fine-tuning only (method: full)")
    done = out_dir / "sft_config.json"
    if done.exists() and all(_snapshot_ok(out_dir, k, key) for k in cfg.snapshots):
        try:
            meta = json.loads(done.read_text())
            if meta.get("key") == key:
                return meta["metrics"]
        except ValueError:
            pass
    return None


def train(cfg: SFTConfig, train_texts: dict[str, str], out_dir: str | Path,
          eval_texts: dict[str, str] | None = None, kind: str = "sft", label: str = "",
          progress: bool = True) -> dict:
    """Fine-tune ``cfg.base_model`` on ``train_texts``; save to ``out_dir``. Returns metrics.

    Reuses a finished model whose key matches; resumes from ``out_dir/checkpoint`` otherwise.
    """
    import torch

    out_dir = Path(out_dir)
    text_hash = key_of(sorted(train_texts.items()))
    key = cfg.key(text_hash, kind)
    done = _finished(cfg, out_dir, key)
    if done is not None:
        return done
    torch.manual_seed(cfg.seed)
    lm = load_model(cfg.base_model, device=cfg.device, dtype="float32")
    prec = precision(cfg.precision, lm.device)
    blocks = make_blocks([train_texts[s] for s in sorted(train_texts)], lm.tokenizer,
                         cfg.block_size, source=f"training text ({', '.join(sorted(train_texts))})")
    ev = (make_blocks([eval_texts[s] for s in sorted(eval_texts)], lm.tokenizer, cfg.block_size,
                      source="validation text")[:cfg.eval_blocks] if eval_texts else
          np.zeros((0, cfg.block_size), np.int64))
    opt_parts = _optimise(cfg, lm)
    rng = np.random.default_rng(cfg.seed)
    order = np.concatenate([rng.permutation(len(blocks))
                            for _ in range(math.ceil(cfg.steps * cfg.batch_size / len(blocks)) + 1)])
    ckpt = out_dir / "checkpoint"
    start = _resume(ckpt, key, lm.device, *opt_parts[:1], *opt_parts[2:],
                    _base_loss(cfg, lm, ev))
    t0 = time.time()
    bar = tqdm(total=cfg.steps, initial=start[0], desc=f"SFT {label or kind}",
               disable=not progress, leave=False)
    record = {"config": asdict(cfg), "kind": kind, "label": label,
              "train_stories": sorted(train_texts), "eval_stories": sorted(eval_texts or {}),
              "train_text_hash": text_hash}

    def snapshot(step, history):
        _save_snapshot(cfg, lm, opt_parts[0], out_dir, step, key, history, len(blocks), ev,
                       {**record, "precision": prec})

    with deterministic(lm.device):                             # reruns give the same weights
        history = _steps(cfg, lm, opt_parts, blocks, order, start, key, ckpt, bar, prec,
                         snapshot)
    for k in cfg.snapshots:        # a run resumed past a snapshot whose save was lost
        if not _snapshot_ok(out_dir, k, key):
            raise DataError(f"{snapshot_dir(out_dir, k)}: snapshot of step {k} missing after "
                            f"training; delete {out_dir / 'checkpoint'} and rerun")
    bar.close()
    seconds = time.time() - t0
    metrics = dict(
        kind=kind, label=label, n_train_blocks=int(len(blocks)), n_eval_blocks=int(len(ev)),
        train_tokens_seen=int(cfg.steps * cfg.batch_size * (cfg.block_size + 1)),
        epochs=float(cfg.steps * cfg.batch_size / len(blocks)), seconds=seconds,
        device=lm.device, precision=prec, **_losses(history, start[2], eval_loss(lm, ev)))
    _save(cfg, lm, opt_parts[0], out_dir, history, metrics,
          {"key": key, **record, "metrics": metrics})
    return metrics


def _losses(history: list[dict], val_before: float, val_after: float) -> dict:
    hist = pd.DataFrame(history)
    ppl = lambda v: math.exp(v) if np.isfinite(v) else float("nan")
    return dict(train_loss_first=float(hist["train_loss"].iloc[:5].mean()),
                train_loss_last=float(hist["train_loss"].iloc[-5:].mean()),
                val_loss_before=val_before, val_loss_after=val_after,
                val_ppl_before=ppl(val_before), val_ppl_after=ppl(val_after))


def _save(cfg: SFTConfig, lm: LoadedModel, model, out_dir: Path, history: list[dict],
          metrics: dict, config: dict) -> None:
    """The final model (LoRA adapters merged) with its tokenizer, history and config."""
    if cfg.method == "lora":
        model = model.merge_and_unload()
    _write_model(lm, model, out_dir, history, config)


def _write_model(lm: LoadedModel, model, out_dir: Path, history: list[dict], config: dict
                 ) -> None:
    """The model, tokenizer, history and ``sft_config.json``, written beside and renamed."""
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    lm.tokenizer.save_pretrained(tmp)
    write_csv(tmp / "train_history.csv", pd.DataFrame(history))
    write_json(tmp / "sft_config.json", config)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def perplexity_table(models: list[str], labels: list[str], texts: dict[str, str],
                     block_size: int = 128, n_blocks: int = 16, device: str | None = None
                     ) -> pd.DataFrame:
    """Perplexity of each model on the first ``n_blocks`` blocks of ``texts`` (the scored
    stories' own text, which no model trained on in ``external`` mode)."""
    rows = []
    for name, label in zip(models, labels):
        lm = load_model(str(name), device=device, dtype="float32")
        blocks = make_blocks([texts[s] for s in sorted(texts)], lm.tokenizer, block_size,
                             source=f"evaluation text ({', '.join(sorted(texts))})")[:n_blocks]
        loss = eval_loss(lm, blocks)
        rows.append(dict(model=label, path=str(name), text=",".join(sorted(texts)),
                         tokens=int(blocks.size), loss=loss, perplexity=math.exp(loss)))
    return pd.DataFrame(rows)


def model_dir(models_root: Path, base_tag: str, kind: str, fold: str, seed: int, key: str) -> Path:
    """``<cache>/models/<base>_sft_model/<kind>_<fold>_seed<k>_<key>``: the training ``key`` is
    in the name, so two runs that differ in anything but the name (another profile's number of
    steps) never write the same folder (the seed called it gpt2_sft_model)."""
    return Path(models_root) / f"{base_tag}_sft_model" / f"{kind}_{fold}_seed{seed}_{key[:8]}"


# --------------------------------------------------------------------------- stage runner
@dataclass(frozen=True)
class SFTUnit:
    """One model to train: a fold, a seed and a kind (sft or a control). Plain data, so the
    same unit runs here or on a Dask worker (a GPU one when the cluster has them)."""
    cfg: SFTConfig
    kind: str
    fold: dict = field(hash=False, compare=False)
    out_dir: str = ""
    texts: dict = field(hash=False, compare=False, default_factory=dict)
    eval_texts: dict = field(hash=False, compare=False, default_factory=dict)


def unit_config(cfg: SFTConfig, seed: int, checkpoints=(), checkpoint_seeds=None) -> SFTConfig:
    """The training run of one seed. A seed of ``checkpoint_seeds`` (None: every seed) trains to
    the last of ``checkpoints`` and ``cfg.steps`` and saves the model at each of the others
    (one run gives every checkpoint: with a constant learning rate and the same data order,
    the model after k steps does not depend on how many steps follow)."""
    steps = sorted({int(cfg.steps), *(int(k) for k in checkpoints)})
    if not checkpoints or (checkpoint_seeds is not None and int(seed) not in checkpoint_seeds):
        return SFTConfig(**{**asdict(cfg), "seed": int(seed)})
    if cfg.warmup_steps:
        raise ValueError("checkpoints need a constant learning rate (warmup_steps: 0): with a "
                         "schedule the model after k steps would depend on the run's length")
    return SFTConfig(**{**asdict(cfg), "seed": int(seed), "steps": steps[-1],
                        "snapshots": tuple(steps[:-1])})


def plan_models(corpus: dict[str, str], scored: list[str], cfg: SFTConfig, models_root: Path,
               mode: str = "heldout", controls=CONTROLS, seeds=(0,),
               n_folds: int | None = None, exclude=(), subject_stories: dict | None = None,
               checkpoints=(), checkpoint_seeds=None) -> tuple[list[dict], list[SFTUnit]]:
    """The folds and every model the comparison needs: per fold and seed, ``sft`` on the fold's
    training stories and each of ``controls`` with the same budget (see module docstring);
    ``mode="leaky"`` trains them on every story instead, labelled ``-leaky``. ``checkpoints``
    (steps): the models along the way too (:func:`unit_config`)."""
    from .models import model_tag

    missing = [s for s in scored if s not in corpus]
    if missing:
        raise DataError(f"scored stories {missing} are not in the SFT corpus")
    unknown = set(controls) - set(CONTROLS)
    if unknown:
        raise ValueError(f"unknown SFT controls {sorted(unknown)}; choose from {CONTROLS}")
    folds = plan_folds(scored, corpus, mode, n_folds, exclude, subject_stories)
    check_no_leak(folds)
    units = []
    base_tag = model_tag(cfg.base_model)
    for fold in folds:
        train_texts = {s: corpus[s] for s in fold["train_stories"]}
        eval_texts = {s: corpus[s] for s in fold["score_stories"]}
        for seed in seeds:
            kinds = [("sft", train_texts)]
            if "control" in controls:
                kinds.append(("control", {s: control_text(t, seed, s)
                                          for s, t in sorted(train_texts.items())}))
            if "scrambled" in controls:
                kinds.append(("scrambled", scrambled_texts(train_texts, seed)))
            for kind, texts in kinds:
                ucfg = unit_config(cfg, seed, checkpoints, checkpoint_seeds)
                key = ucfg.key(key_of(sorted(texts.items())), kind)
                d = trained_dir(models_root, base_tag, key) or \
                    model_dir(models_root, base_tag, condition_name(kind, fold["leaky"]),
                              fold["fold"], seed, key)
                units.append(SFTUnit(ucfg, kind, fold, str(d), texts, eval_texts))
    return folds, units


def trained_dir(models_root: Path, base_tag: str, key: str) -> Path | None:
    """A finished model with this training key (same config, training text and kind), wherever
    an earlier run put it: another profile whose fold trained on the same stories reuses it. A
    snapshot along the way shares its run's key and is never the finished model."""
    for cfg_file in sorted((Path(models_root) / f"{base_tag}_sft_model").glob("*/sft_config.json")):
        try:
            meta = json.loads(cfg_file.read_text())
        except ValueError:
            continue
        if meta.get("key") == key and meta.get("step") is None:
            return cfg_file.parent
    return None


MODEL_COLUMNS = ["kind", "condition", "fold", "seed", "step", "path", "score_stories", "train_stories",
                 "subjects", "leaky", "n_train_blocks", "n_eval_blocks", "train_tokens_seen", "epochs",
                 "train_loss_first", "train_loss_last", "val_loss_before", "val_loss_after",
                 "val_ppl_before", "val_ppl_after", "seconds", "device", "precision"]


def checkpoint_condition(condition: str, step: int, headline_steps: int) -> str:
    """The label of a model after ``step`` steps: the condition itself at the headline's number
    of steps, else ``<condition>@<step>`` (``sft@24``)."""
    return condition if int(step) == int(headline_steps) else f"{condition}@{int(step)}"


def split_checkpoint(condition: str) -> tuple[str, int | None]:
    """(``sft``, 24) from ``sft@24``; (condition, None) for any other label."""
    base, _, step = str(condition).partition("@")
    return (base, int(step)) if step.isdigit() else (str(condition), None)


def train_unit(_job, unit: SFTUnit, progress: bool = True, headline_steps: int | None = None
               ) -> list[dict]:
    """Train one unit's model (reused when done, resumed from its checkpoint) -> table rows:
    the final model and each snapshot, labelled by :func:`checkpoint_condition`."""
    cond = condition_name(unit.kind, unit.fold["leaky"])
    m = train(unit.cfg, unit.texts, unit.out_dir, unit.eval_texts, kind=unit.kind,
              label=f"{cond} {unit.fold['fold']}", progress=progress)
    head = unit.cfg.steps if headline_steps is None else headline_steps
    common = dict(kind=unit.kind, fold=unit.fold["fold"], seed=unit.cfg.seed,
                  score_stories=",".join(unit.fold["score_stories"]),
                  train_stories=",".join(unit.fold["train_stories"]),
                  subjects=",".join(unit.fold.get("subjects", [])), leaky=unit.fold["leaky"])
    rows = [dict(common, condition=checkpoint_condition(cond, unit.cfg.steps, head),
                 step=unit.cfg.steps, path=Paths.from_env().rel(unit.out_dir),
                 **{k: v for k, v in m.items() if k not in ("kind", "label")})]
    for k in sorted(unit.cfg.snapshots):
        meta = _snapshot_ok(Path(unit.out_dir), k, unit.cfg.key(
            key_of(sorted(unit.texts.items())), unit.kind))
        sm = meta["metrics"]
        rows.append(dict(common, **{c: m[c] for c in ("n_train_blocks", "n_eval_blocks",
                                                        "train_loss_first", "val_loss_before",
                                                        "val_ppl_before", "device", "precision")},
                         condition=checkpoint_condition(cond, k, head), step=int(k),
                         path=Paths.from_env().rel(snapshot_dir(unit.out_dir, k)),
                         train_tokens_seen=sm["train_tokens_seen"], epochs=sm["epochs"],
                         train_loss_last=float(pd.read_csv(snapshot_dir(unit.out_dir, k) /
                                                           "train_history.csv")
                                               .train_loss.iloc[-5:].mean()),
                         val_loss_after=sm["val_loss_after"], val_ppl_after=sm["val_ppl_after"],
                         seconds=float("nan")))
    return rows


def train_models(corpus: dict[str, str], scored: list[str], cfg: SFTConfig, models_root: Path,
              mode: str = "heldout", controls=CONTROLS, seeds=(0,), n_folds: int | None = None,
              progress: bool = True, client=None, exclude=(), subject_stories: dict | None = None,
              checkpoints=(), checkpoint_seeds=None) -> tuple[list[dict], pd.DataFrame]:
    """Train every model the comparison needs (:func:`plan_models`), serially or on a Dask
    ``client`` (one GPU per unit where workers advertise GPUs). Returns (folds, models table:
    one row per model, checkpoints included, the headline's ``cfg.steps`` models labelled by
    their condition alone)."""
    from functools import partial

    from .cluster import gpu_resources, map_units

    folds, units = plan_models(corpus, scored, cfg, models_root, mode, controls, seeds, n_folds,
                              exclude, subject_stories, checkpoints, checkpoint_seeds)
    rows = map_units(partial(train_unit, progress=progress and client is None,
                             headline_steps=cfg.steps), None, units,
                     client=client, desc="SFT models", progress=progress,
                     resources=gpu_resources(client))
    return folds, pd.DataFrame([r for rs in rows for r in rs], columns=MODEL_COLUMNS)
