"""Run the stage notebooks in order with papermill, then the master report.

    python -m lib.pipeline --profile params/mini.yaml [--run NAME] [--set key=value ...]
                           [--force] [--only 05_brain_score] [--report total.ipynb]

Each stage is executed from its jupytext ``.py`` (converted in memory) into
``results/<run>/notebooks/<stage>.ipynb`` with the profile's parameters. A stage whose notebook,
the ``lib`` code it imports (docstrings and comments aside), parameters and upstream stages did
not change is not rerun (its key is kept in a
sidecar next to the executed notebook) unless ``--force``. A failing stage stops the run with a
non-zero exit naming the stage and the executed notebook that holds the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

from .cache import file_hash, is_fresh, key_of, write_json, write_sidecar
from .paths import ROOT, Paths

STAGES = ["01_data", "02_transcripts", "03_features", "04_sft", "05_brain_score", "06_compare"]
REPORT = "total"
#: folders a stage rewrites whole: emptied before it reruns, so no stale map or figure of an
#: earlier run survives next to the new ones (caches named here are kept).
STAGE_FOLDERS = {"05_brain_score": ("brain_score", {"units"}), "06_compare": ("compare", set())}


class StageFailed(RuntimeError):
    pass


def load_profile(path: str | Path, overrides: list[str] | None = None) -> dict:
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise SystemExit(f"{path}: profile not found") from None
    for ov in overrides or []:
        if "=" not in ov:
            raise SystemExit(f"--set expects key=value, got {ov!r}")
        k, v = ov.split("=", 1)
        params[k.strip()] = yaml.safe_load(v)
    params.setdefault("profile", path.stem)
    return params


def notebook_source(stage: str, root: Path = ROOT):
    import jupytext

    src = root / "notebooks" / f"{stage}.py"
    if not src.exists():
        raise SystemExit(f"{src}: stage notebook not found")
    return jupytext.read(src), src


def _lib_imports(tree, module: str) -> set[str]:
    """``lib`` modules a parsed file imports anywhere (lazy imports inside functions included),
    with the packages whose ``__init__`` each import runs."""
    import ast

    pkg = module.split(".") if module.endswith("__init__") else module.split(".")[:-1]
    pkg = [p for p in pkg if p != "__init__"]
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            names = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = (pkg[:len(pkg) - n.level + 1] if n.level else []) + \
                (n.module.split(".") if n.module else [])
            names = [".".join(base)] + [".".join(base + [a.name]) for a in n.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {m for m in out if m == "lib" or m.startswith("lib.")}


def code_hash(src: Path, root: Path = ROOT) -> str:
    """What a stage runs: its script (as written: its markdown is part of the executed notebook)
    and every ``lib`` module it imports, transitively, each with docstrings and comments left
    out (``ast.unparse`` of the tree without them), so an edit of a docstring or of a module the
    stage never imports does not make its results stale."""
    import ast

    def normalised(path: Path) -> tuple[str, object]:
        tree = ast.parse(path.read_text())
        for n in ast.walk(tree):
            body = getattr(n, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                    isinstance(getattr(body[0], "value", None), ast.Constant) and \
                    isinstance(body[0].value.value, str):
                n.body = body[1:] or [ast.Pass()]
        return ast.unparse(tree), tree

    def file_of(mod: str) -> Path | None:
        p = root.joinpath(*mod.split("."))
        return p / "__init__.py" if (p / "__init__.py").exists() else \
            p.with_suffix(".py") if p.with_suffix(".py").exists() else None

    tree = ast.parse(src.read_text())
    todo, seen, parts = sorted(_lib_imports(tree, "__main__")), set(), []
    while todo:
        mod = todo.pop()
        f = file_of(mod)
        if mod in seen or f is None:
            continue
        seen.add(mod)
        body, t = normalised(f)
        parts.append((mod, body))
        name = f"{mod}.__init__" if f.name == "__init__.py" else mod
        todo += sorted(_lib_imports(t, name) - seen)
    return key_of(file_hash(src), sorted(parts))


def declared_parameters(nb) -> set[str]:
    """Names assigned in the cell tagged ``parameters`` (read with ast: papermill's own inspector
    skips lines whose comments it cannot parse, which would silently drop a parameter)."""
    import ast

    for c in nb.cells:
        if c.cell_type == "code" and "parameters" in c.metadata.get("tags", []):
            names = set()
            for node in ast.parse(c.source).body:
                if isinstance(node, (ast.Assign, ast.AnnAssign)):
                    for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                        if isinstance(t, ast.Name):
                            names.add(t.id)
            return names
    return set()


def _kernel_manager():
    """Kernels talk to papermill over IPC sockets where the OS has them: no TCP port, and no
    'Kernel is running over TCP without encryption' warning from every stage."""
    if os.name != "posix":
        return {}
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self):
            return "ipc"

    return {"kernel_manager_class": IPCKernelManager}


def execute(stage: str, params: dict, out_nb: Path, root: Path = ROOT, log_output: bool = False):
    import nbformat
    import papermill as pm

    nb, src = notebook_source(stage, root)
    declared = declared_parameters(nb)
    tmp_in = out_nb.parent / f".{stage}.input.ipynb"
    out_nb.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, tmp_in)
    given = {k: v for k, v in params.items() if k in declared}
    tmp_out = out_nb.with_name(f".{out_nb.stem}.part.ipynb")
    try:
        pm.execute_notebook(str(tmp_in), str(tmp_out), parameters=given, cwd=str(root),
                            kernel_name="python3", progress_bar=False, log_output=log_output,
                            report_mode=False, **_kernel_manager())
    except pm.PapermillExecutionError as e:
        tmp_out.replace(out_nb)  # keep the executed notebook with its traceback
        relabel(out_nb, src)
        raise StageFailed(f"stage {stage} failed: {e.ename}: {e.evalue}\n"
                          f"the traceback is in {out_nb}") from None
    finally:
        tmp_in.unlink(missing_ok=True)
    tmp_out.replace(out_nb)
    relabel(out_nb, src)
    return src


def relabel(nb_path: Path, src: Path) -> None:
    """papermill records the temporary notebooks it ran; record the real source and output.
    Cell ids (random when jupytext and papermill make cells) become their positions, so a rerun
    writes the same notebook."""
    import nbformat

    from .cache import atomic_path

    nb = nbformat.read(nb_path, 4)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"
    pm_meta = nb.metadata.setdefault("papermill", {})
    pm_meta["input_path"] = Paths.rel(src)
    pm_meta["output_path"] = Paths.rel(nb_path)
    with atomic_path(nb_path, suffix=".ipynb") as tmp:
        nbformat.write(nb, tmp)


def stage_keys(params: dict, root: Path = ROOT):
    """(stage, source, key) of every stage: a stage's key is its script and the ``lib`` code it
    runs (:func:`code_hash`), the parameters its notebook declares and the upstream stages'
    keys (a parameter of stage 05 does not make stage 03 stale)."""
    upstream = []
    for stage in STAGES:
        nb, src = notebook_source(stage, root)
        given = {k: params[k] for k in sorted(declared_parameters(nb)) if k in params}
        key = key_of(stage, 3, code_hash(src, root), given, upstream)
        upstream.append(key)
        yield stage, src, key


class ProfileError(ValueError):
    """A profile names a parameter that no notebook declares."""


#: profile keys that are not notebook parameters: the profile's name and the run folder's
PIPELINE_KEYS = {"profile", "run"}


def check_profile(params: dict, root: Path = ROOT, source: str = "profile") -> None:
    """Every key of ``params`` is a parameter of some stage notebook or of the report (else it
    would be silently dropped): raise :class:`ProfileError` naming the unknown keys and the
    known ones."""
    known = set(PIPELINE_KEYS)
    for stage in STAGES + [REPORT]:
        known |= declared_parameters(notebook_source(stage, root)[0])
    unknown = sorted(set(params) - known)
    if unknown:
        raise ProfileError(f"{source}: unknown parameter{'s' * (len(unknown) > 1)} "
                           f"{', '.join(unknown)} (no notebook declares "
                           f"{'them' if len(unknown) > 1 else 'it'}); known: "
                           f"{', '.join(sorted(known))}")


def run(params: dict, run_name: str | None = None, force: bool = False, only: list[str] | None
        = None, report: str | None = None, root: Path = ROOT, verbose: bool = True,
        kernel: bool = True) -> Path:
    """Run the stages of ``params`` (see module docstring). ``kernel=False`` runs each stage's
    script in this process (:mod:`lib.inprocess`: no Jupyter needed, no executed notebook
    written; its record is ``notebooks/<stage>.plain``) and no report."""
    os.environ.pop("MPLBACKEND", None)  # an exported Agg backend would strip inline figures
    from .cluster import quiet_threads_env

    os.environ.update(quiet_threads_env())   # kernels inherit it: idle threads do not spin
    paths = Paths.from_env()  # data/ and results/ (NARRATIVES_ROOT moves them; notebooks stay)
    run_name = run_name or params.get("run") or params["profile"]
    run_dir = paths.run_dir(run_name)
    check_profile(params, root, params.get("profile", "profile"))
    params = {**params, "run_dir": Paths(root).rel(run_dir)}  # relative to the kernel cwd
    write_json(run_dir / "params.json", params)
    ran, reused = [], []
    for stage, src, key in stage_keys(params, root):
        out_nb = run_dir / "notebooks" / f"{stage}.{'ipynb' if kernel else 'plain'}"
        if only and stage not in only and not any(stage.startswith(o) for o in only):
            continue
        if not force and is_fresh(out_nb, key):
            reused.append(stage)
            if verbose:
                print(f"[{stage}] unchanged: reusing {out_nb}", flush=True)
            continue
        ran.append(stage)
        t0 = time.time()
        if verbose:
            print(f"[{stage}] running ...", flush=True)
        clear_outputs(run_dir, stage)
        if kernel:
            execute(stage, params, out_nb, root)
        else:
            from .inprocess import run_script

            run_script(src, params, root)
            out_nb.parent.mkdir(parents=True, exist_ok=True)
            out_nb.write_text(f"{src.name} ran in-process with {run_name}'s parameters\n")
        write_sidecar(out_nb, key, seconds=round(time.time() - t0, 1))
        if verbose:
            print(f"[{stage}] done in {time.time() - t0:.0f} s -> {out_nb}", flush=True)
    if report and kernel:
        report_path = Path(report)
        report_path = report_path if report_path.is_absolute() else root / report_path
        t0 = time.time()
        if verbose:
            print(f"[{REPORT}] running ...", flush=True)
        execute(REPORT, params, report_path, root)
        export_html(report_path)
        if verbose:
            print(f"[{REPORT}] done in {time.time() - t0:.0f} s -> {report_path} and "
                  f"{report_path.with_suffix('.html')}", flush=True)
    if verbose:
        print(f"run {run_name}: ran {', '.join(ran) or 'no stage'}; reused "
              f"{', '.join(reused) or 'no stage'}"
              + ("" if force or not reused else " (unchanged code, parameters and inputs; "
                 "--force or make report FORCE=1 reruns them)"), flush=True)
    return run_dir


def clear_outputs(run_dir: Path, stage: str) -> None:
    """Empty the folder ``stage`` rewrites (see STAGE_FOLDERS), keeping its caches."""
    import shutil

    if stage not in STAGE_FOLDERS:
        return
    name, keep = STAGE_FOLDERS[stage]
    folder = Path(run_dir) / name
    for p in folder.iterdir() if folder.is_dir() else []:
        if p.name in keep:
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink()


HIDDEN_TAGS = ("parameters", "injected-parameters")   # the header shows the parameters once
OFFLINE = dict(mathjax_url="", require_js_url="", jquery_url="", widget_renderer_url="",
               jupyter_widgets_base_url="", mermaid_js_url="", mermaid_layout_elk_js_url="")


def export_html(nb_path: Path) -> Path:
    """The reader's HTML next to the notebook (code hidden, a table of contents, figures
    embedded, nothing fetched from the network) and ``<name>-code.html`` with the code."""
    import nbformat
    from nbconvert import HTMLExporter

    from .cache import write_text

    nb = nbformat.read(nb_path, 4)
    nb.cells = [c for c in nb.cells if not set(c.metadata.get("tags", [])) & set(HIDDEN_TAGS)]
    code_name = nb_path.with_name(nb_path.stem + "-code.html").name
    reader, _ = HTMLExporter(embed_images=True, exclude_input=True, exclude_input_prompt=True,
                             exclude_output_prompt=True, **OFFLINE).from_notebook_node(nb)
    code, _ = HTMLExporter(embed_images=True, **OFFLINE).from_notebook_node(nb)
    write_text(nb_path.with_name(code_name), offline_html(code))
    return write_text(nb_path.with_suffix(".html"),
                      with_toc(offline_html(reader), code_name, nb_path.name))


def offline_html(html: str) -> str:
    """Drop script tags left without a source (the CDN URLs emptied above)."""
    import re

    return re.sub(r'<script[^>]*\ssrc=""[^>]*>\s*</script>', "", html)


def with_toc(html: str, code_name: str, nb_name: str) -> str:
    """Insert a table of contents (the h2 parts and their h3 sections) and the links to the code
    after the title."""
    import html as h
    import re

    items, open_sub = [], False
    for lv, i, t in re.findall(r'<h([23]) id="([^"]+)"[^>]*>(.*?)</h\1>', html, flags=re.S):
        link = f'<a href="#{i}">{h.escape(re.sub(r"<[^>]+>|¶", "", t)).strip()}</a>'
        if lv == "3":                       # a section: nested under its part
            items.append(("" if open_sub else "<ul>") + f"<li>{link}</li>")
            open_sub = True
        else:
            items.append(("</ul></li>" if open_sub else "</li>" if items else "") + f"<li>{link}")
            open_sub = False
    if items:
        items.append("</ul></li>" if open_sub else "</li>")
    nav = (f'<nav class="report-toc" style="margin:1em 0 2em;padding:.6em 1em;'
           f'border-left:3px solid #ccc"><strong>Contents</strong><ol>{"".join(items)}</ol>'
           f'<p>Code: <a href="{code_name}">{code_name}</a> (the same report with its code) '
           f'or the notebook <a href="{nb_name}">{nb_name}</a>.</p></nav>')
    m = re.search(r"</h1>", html)
    return html[:m.end()] + nav + html[m.end():] if m else nav + html


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--profile", default="params/mini.yaml")
    ap.add_argument("--run", default=None, help="results/<run> (default: the profile's name)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a profile parameter (YAML value)")
    ap.add_argument("--force", action="store_true", help="rerun stages even if unchanged")
    ap.add_argument("--only", nargs="*", help="run only these stages (e.g. 05)")
    ap.add_argument("--report", default=None, help="also execute notebooks/total.py into this path")
    ap.add_argument("--no-kernel", action="store_true",
                    help="run each stage's script in this process (no Jupyter; no report)")
    a = ap.parse_args(argv)
    params = load_profile(a.profile, a.set)
    try:
        run(params, a.run, a.force, a.only, a.report, kernel=not a.no_kernel)
    except (StageFailed, ProfileError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
