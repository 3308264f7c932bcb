"""Run header and helpers for the master report ``total.ipynb``."""
from __future__ import annotations

import datetime as _dt
import json
import platform
import subprocess
from pathlib import Path

import pandas as pd

from .paths import ROOT


def git_commit(root: Path = ROOT) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                             capture_output=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, text=True, capture_output=True, timeout=10).stdout.strip()
        return (out.stdout.strip() or "unknown") + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_summary() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"CUDA: {torch.cuda.get_device_name(0)}"
        return f"CPU ({platform.processor() or platform.machine()}, torch {torch.__version__})"
    except ImportError:
        return "CPU"


def run_header(run_dir: str | Path, params: dict) -> pd.DataFrame:
    """Profile, models (with fingerprints), data provenance, date, commit, device."""
    run_dir = Path(run_dir)
    manifest = pd.read_csv(run_dir / "data" / "data_manifest.csv")
    synthetic = manifest["synthetic_bold"].astype(str).str.lower().eq("true").any()
    idx_path = run_dir / "features" / "activations_index.csv"
    models = ""
    if idx_path.exists():
        idx = pd.read_csv(idx_path)
        models = "; ".join(sorted({f"{r.condition}: {r.model} [{str(r.fingerprint)[:12]}]"
                                   for r in idx.itertuples()}))
    used = manifest[~manifest["excluded"].astype(str).str.lower().eq("true")]
    rows = [
        ("profile", params.get("profile", "?")),
        ("data", ("SYNTHETIC BOLD (narratives-mini: real pieman stimuli, generated BOLD)"
                  if synthetic else f"OpenNeuro ds002345 ({params.get('bold_source', 'raw')})")),
        ("subjects used", ", ".join(sorted(used["subject"].unique()))),
        ("scans excluded", "; ".join(f"{r.subject} {r.story} run-{r.run}: {r.exclusion_reason}"
                                     for r in manifest.itertuples()
                                     if str(r.excluded).lower() == "true") or "none"),
        ("stories", ", ".join(sorted(manifest["story"].unique()))),
        ("base model", params.get("model", "?")),
        ("layer", str(params.get("layer", "?"))),
        ("models (fingerprints)", models),
        ("SFT mode", params.get("sft_mode", "?")),
        ("date", _dt.datetime.now().strftime("%Y-%m-%d %H:%M")),
        ("git commit", git_commit()),
        ("device", device_summary()),
    ]
    return pd.DataFrame(rows, columns=["item", "value"]).set_index("item")


def load_params(run_dir: str | Path) -> dict:
    p = Path(run_dir) / "params.json"
    return json.loads(p.read_text()) if p.exists() else {}
