"""Shared fixtures. Tests never touch the network (HF_HUB_OFFLINE=1) nor the project's own
data/ and results/: each session works in a temporary project root (NARRATIVES_ROOT)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import subprocess
import sys

import pytest

from lib.paths import Paths

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("MPLBACKEND", None)

REPO = Path(__file__).resolve().parent.parent
STIMULI = REPO / "data" / "narratives" / "stimuli"


@pytest.fixture(scope="session", autouse=True)
def project_root(tmp_path_factory):
    """A throw-away project root for data/, results/ and the caches (root/cache)."""
    root = tmp_path_factory.mktemp("project")
    tok = Paths.from_env().models / "gpt2-tokenizer"    # the user's cache, before the move
    old = os.environ.get("NARRATIVES_ROOT")
    os.environ["NARRATIVES_ROOT"] = str(root)
    os.environ.pop("NARRATIVES_CACHE", None)
    # reuse the tokenizer built from whisper's gpt2.tiktoken across sessions when present
    if tok.exists():
        shutil.copytree(tok, Paths.from_env().models / "gpt2-tokenizer")
    yield root
    if old is None:
        os.environ.pop("NARRATIVES_ROOT", None)
    else:
        os.environ["NARRATIVES_ROOT"] = old


@pytest.fixture(scope="session")
def paths(project_root):
    return Paths.from_env()


@pytest.fixture(scope="session")
def mini(project_root, paths):
    """A small narratives-mini tree: 3 subjects, 8 mm grid (SYNTHETIC BOLD)."""
    from lib.synthetic import make_mini

    return make_mini(project_root / "data" / "mini", seed=0, resolution_mm=8,
                     subjects=["sub-001", "sub-002", "sub-003"], paths=paths)


@pytest.fixture(scope="session")
def tiny(paths):
    from lib.models import load_model

    return load_model("tiny-gpt2", device="cpu", paths=paths)


@pytest.fixture
def pieman_words():
    from lib.transcripts import story_transcript

    return story_transcript(STIMULI / "pieman" / "align.csv", STIMULI / "pieman" / "transcript.txt")


# --------------------------------------------------------------------------- stage-05 helpers
def fake_index(run_dir, stories, rng_seed=0):
    """Word vectors that carry word rate and letters (what the planted signal is made of)."""
    import numpy as np
    import pandas as pd

    from lib import transcripts

    rows = []
    rng = np.random.default_rng(rng_seed)
    for story in stories:
        words = transcripts.read_transcript(run_dir / "transcripts" / f"{story}.tsv")
        letters = words.word.astype(str).str.len().to_numpy(float)
        acts = np.column_stack([np.ones(len(words)), letters, rng.standard_normal((len(words), 6))])
        p = run_dir / "acts" / f"{story}.npz"
        p.parent.mkdir(parents=True, exist_ok=True)
        np.savez(p, activations=acts.astype(np.float32))
        rows.append(dict(condition="raw", story=story, seed=0, model="fake", model_tag="fake",
                         fingerprint="0", path=str(p), all_layers_path="", leaky=False,
                         cache_hit=False))
    return pd.DataFrame(rows)


def stage05_job(root, run_dir, paths, n_perm=100, **kw):
    """A stage-05 job on a narratives-mini tree with fake word vectors (word rate, letters)."""
    import nibabel as nib

    from lib import data, encoding, transcripts
    from lib.engine.inference import NullSpec

    m = data.build_manifest(root, stories=["pieman"], include_excluded=True, paths=paths)
    transcripts.build_transcripts(m, run_dir / "transcripts")
    idx = fake_index(run_dir, ["pieman"])
    st = encoding.Settings(null=NullSpec(n_perm=n_perm), perm_conditions=("raw",),
                           tr=data.single_tr(m), **kw)
    mask = nib.load(str(root / "derivatives/synthetic-truth/brain_mask.nii.gz"))
    return encoding.volume_job(m, run_dir / "transcripts", idx, run_dir / "brain_score", mask, st,
                             root / "derivatives/synthetic-truth/planted_mask.nii.gz")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------- the e2e run
def profile_args(run: str, profile: str = "params/quick.yaml", **sets) -> list[str]:
    """``--profile P --run R --set k=v ...`` for :func:`run_pipeline`."""
    out = ["--profile", profile, "--run", run]
    for k, v in sets.items():
        out += ["--set", f"{k}={v}"]
    return out


def run_pipeline(args, env_root, timeout=900):
    import os

    env = {**os.environ, "NARRATIVES_ROOT": str(env_root), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "lib.pipeline", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def quick_run(project_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e")
    # one fixed thread count: `threads: auto` follows the load, and another BLAS thread count
    # sums in another order, so a rerun compares with this run only at the same count
    args = ["--profile", "params/quick.yaml", "--run", "e2e", "--set", f"bids_root={out / 'bids'}",
            "--set", "threads=1", "--report", str(out / "total.ipynb")]
    p = run_pipeline(args, project_root)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out, project_root / "results" / "e2e", args, p


