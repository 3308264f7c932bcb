"""Run a stage notebook's percent script in this Python process, without a Jupyter kernel.

For machines that have the project's numerical stack but no Jupyter (a GPU node, a batch job):
``python -m lib.pipeline --profile P --no-kernel``. The script runs as papermill would run it:
its parameters cell, then the profile's values for the names that cell declares (papermill's
injected cell), then the rest, with the repository as the working directory. Figures go
nowhere (the Agg backend) and ``display`` prints a line; the stage's tables and files are the
same as a kernel's. No executed notebook is written.
"""
from __future__ import annotations

import ast
import contextlib
import os
import sys
import types
from pathlib import Path

PARAMETERS = '# %% tags=["parameters"]'


def split_parameters(text: str, source: str = "") -> tuple[str, str, str]:
    """(before, parameters cell, after) of a jupytext percent script."""
    i = text.find(PARAMETERS)
    if i < 0:
        raise ValueError(f"{source}: no cell tagged parameters")
    j = text.find("\n# %%", i + len(PARAMETERS))
    j = len(text) if j < 0 else j + 1
    return text[:i], text[i:j], text[j:]


def declared(cell: str) -> set[str]:
    """Names the parameters cell assigns."""
    names = set()
    for node in ast.parse(cell).body:
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) else []
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def injected(params: dict, names: set[str]) -> str:
    """The injected-parameters cell: one assignment per declared name the profile gives."""
    return "".join(f"{k} = {params[k]!r}\n" for k in sorted(names) if k in params)


@contextlib.contextmanager
def _quiet_display():
    """``IPython.display`` where IPython is missing: display prints a line, Markdown and HTML
    keep their text."""
    made = []
    try:
        import IPython.display  # noqa: F401
    except ImportError:
        ip, disp = types.ModuleType("IPython"), types.ModuleType("IPython.display")

        class _Text(str):
            pass

        disp.display = lambda *objs, **_: print(*(str(o)[:2000] for o in objs))
        disp.Markdown = disp.HTML = _Text
        # what matplotlib and tqdm ask of IPython: no shell is running
        ip.display, ip.get_ipython, ip.version_info = disp, lambda: None, (8, 24, 0)
        made = ["IPython", "IPython.display"]
        sys.modules.update({"IPython": ip, "IPython.display": disp})
    try:
        yield
    finally:
        for m in made:
            sys.modules.pop(m, None)


def run_script(src: Path, params: dict, root: Path) -> None:
    """Execute ``src`` (a stage's ``.py``) with ``params`` injected, in a fresh namespace."""
    text = Path(src).read_text()
    before, cell, after = split_parameters(text, str(src))
    code = before + cell + "\n# %% injected parameters\n" + injected(params, declared(cell)) \
        + after
    old_cwd, old_backend = Path.cwd(), os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "Agg"
    os.chdir(root)
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        with _quiet_display():
            exec(compile(code, str(src), "exec"), {"__name__": "__main__"})
    finally:
        os.chdir(old_cwd)
        if old_backend is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = old_backend
        import matplotlib.pyplot as plt

        plt.close("all")
