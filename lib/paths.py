"""Where things live. Every module asks a :class:`Paths` object, never a string literal."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Paths:
    """Project layout.

    ``data`` holds inputs (BIDS trees, committed stimuli); ``results/<run>`` holds the outputs of
    one pipeline run; ``cache`` holds what is rebuilt from inputs and reused by content key
    (converted and fine-tuned models, activations, word-level spaces), outside the checkout.
    """

    root: Path = ROOT
    cache_root: Path | None = None

    @classmethod
    def from_env(cls) -> "Paths":
        """``NARRATIVES_ROOT`` moves the whole tree, caches included (tests use a temporary
        one); ``NARRATIVES_CACHE`` moves only the caches."""
        root = Path(os.environ.get("NARRATIVES_ROOT", ROOT)).resolve()
        cache = os.environ.get("NARRATIVES_CACHE")
        if cache:
            return cls(root, Path(cache).expanduser().resolve())
        return cls(root, root / "cache" if "NARRATIVES_ROOT" in os.environ else None)

    @property
    def cache(self) -> Path:
        """The cache folder: ``cache_root``, else the user cache (``$XDG_CACHE_HOME`` or
        ``~/.cache``) / ``narratives-sft``. Deleting it costs only recomputation."""
        if self.cache_root is not None:
            return Path(self.cache_root)
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base).expanduser() / "narratives-sft"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def narratives(self) -> Path:
        """Real Narratives stimuli and metadata committed with the project (read-only)."""
        return ROOT / "data" / "narratives"

    @property
    def metadata(self) -> Path:
        return self.narratives / "metadata"

    @property
    def stimuli(self) -> Path:
        return self.narratives / "stimuli"

    @property
    def models(self) -> Path:
        return self.cache / "models"

    @property
    def derived(self) -> Path:
        return self.cache / "derived"

    @property
    def activations(self) -> Path:
        return self.derived / "activations"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def run_dir(self, run: str) -> Path:
        return self.results / run

    @staticmethod
    def rel(p: str | os.PathLike) -> str:
        """A path for tables: relative to the code's root (where notebooks run) when it lies
        inside it, so committed results stay portable; absolute otherwise."""
        p = Path(p).resolve()
        try:
            return str(p.relative_to(ROOT))
        except ValueError:
            return str(p)

    def resolve(self, p: str | os.PathLike) -> Path:
        """A path from a profile: absolute stays, relative is taken from the project root."""
        p = Path(p)
        return p if p.is_absolute() else self.root / p
