"""Shared fixtures. Tests never touch the network (HF_HUB_OFFLINE=1) nor the project's own
data/ and results/: each session works in a temporary project root (NARRATIVES_ROOT)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("MPLBACKEND", None)

REPO = Path(__file__).resolve().parent.parent
STIMULI = REPO / "data" / "narratives" / "stimuli"


@pytest.fixture(scope="session", autouse=True)
def project_root(tmp_path_factory):
    """A throw-away project root for data/models, data/derived and results/."""
    root = tmp_path_factory.mktemp("project")
    old = os.environ.get("NARRATIVES_ROOT")
    os.environ["NARRATIVES_ROOT"] = str(root)
    # reuse the tokenizer built from whisper's gpt2.tiktoken across sessions when present
    tok = REPO / "data" / "models" / "gpt2-tokenizer"
    if tok.exists():
        shutil.copytree(tok, root / "data" / "models" / "gpt2-tokenizer")
    yield root
    if old is None:
        os.environ.pop("NARRATIVES_ROOT", None)
    else:
        os.environ["NARRATIVES_ROOT"] = old


@pytest.fixture(scope="session")
def paths(project_root):
    from lib.paths import Paths

    return Paths(project_root)


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
