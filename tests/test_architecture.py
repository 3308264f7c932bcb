"""The house: imports inside lib/ only run one way (no circles), read from the code (ast)."""
import ast
from pathlib import Path

LIB = Path(__file__).resolve().parent.parent / "lib"


def module_imports() -> dict[str, set[str]]:
    """lib module -> the lib modules it imports (anywhere in the file, lazy imports included)."""
    mods = {}
    for p in LIB.rglob("*.py"):
        parts = p.relative_to(LIB.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = p
    graph = {}
    for name, p in mods.items():
        pkg = name if p.name == "__init__.py" else name.rsplit(".", 1)[0]
        out = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[:len(pkg.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                out |= {c for c in [target] + [f"{target}.{a.name}" for a in node.names]
                        if c in mods}
            elif isinstance(node, ast.Import):
                out |= {a.name for a in node.names if a.name in mods}
        out.discard(name)
        graph[name] = out
    return graph


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    def reach(a):
        seen, stack = set(), [a]
        while stack:
            for b in graph[stack.pop()]:
                if b not in seen:
                    seen.add(b)
                    stack.append(b)
        return seen

    r = {m: reach(m) for m in graph}
    # a package's __init__ re-exporting its modules is not a circle
    is_pkg = {m for m in graph if (LIB.parent / m.replace(".", "/") / "__init__.py").exists()}
    return sorted({tuple(sorted((a, b))) for a in graph for b in r[a]
                   if a != b and a in r[b] and a not in is_pkg and b not in is_pkg})


def test_the_checker_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [("a", "b"), ("a", "c"), ("b", "c")]


def test_lib_has_no_import_circles():
    assert cycles(module_imports()) == []


def test_paired_statistics_import_nothing_of_the_pipeline():
    g = module_imports()
    # its imports: EngineError, and the shared parameter docs
    assert g["lib.engine.paired"] == {"lib.engine.folds", "lib.engine.docs"}
    assert g["lib.engine.folds"] == {"lib.engine.docs"} and g["lib.engine.docs"] == set()
    assert g["lib.errors"] == set() and g["lib.alignment"] == {"lib.errors"}


LAYERS = [  # bottom to top; a module may import its own layer and the layers below it
    {"lib", "lib.errors", "lib.paths", "lib.cache", "lib.cluster"},
    {"lib.engine", "lib.engine.docs", "lib.engine.backend", "lib.engine.folds", "lib.engine.ridge",
     "lib.engine.inference", "lib.engine.second_level", "lib.engine.partition",
     "lib.engine.paired", "lib.engine.crossed", "lib.engine.combine", "lib.engine.simulate"},
    {"lib.alignment", "lib.data", "lib.datasets", "lib.datasets.matrices",
     "lib.datasets.generic", "lib.datasets.words", "lib.transcripts", "lib.download",
     "lib.rois", "lib.surface", "lib.geometry"},
    {"lib.models", "lib.tokens", "lib.features", "lib.spaces", "lib.sft", "lib.sft_folds"},
    {"lib.synthetic", "lib.synthetic_surface", "lib.job", "lib.units", "lib.encoding",
     "lib.reduction", "lib.matrix_encoding", "lib.deltas", "lib.stage05", "lib.compare",
     "lib.matrix_compare", "lib.plots", "lib.stage06"},
    {"lib.pipeline", "lib.inprocess", "lib.report"},
]


def test_imports_only_go_down_the_layers():
    g = module_imports()
    level = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    assert set(g) == set(level), f"place new modules in a layer: {sorted(set(g) ^ set(level))}"
    up = [(a, b) for a, bs in g.items() for b in bs if level[b] > level[a]]
    assert up == [], f"imports that climb a layer: {up}"


def test_the_engine_imports_nothing_above_it():
    g = module_imports()
    engine = LAYERS[1]
    for m in engine:
        assert g[m] <= engine, (m, g[m] - engine)


def test_the_engine_example_runs():
    """The five-line example in lib/engine/__init__.py's docstring (a doctest)."""
    import doctest

    import lib.engine

    res = doctest.testmod(lib.engine, verbose=False)
    assert res.attempted >= 5 and res.failed == 0


def test_long_functions_say_why():
    """A function over ~60 lines carries a comment saying why, among its first lines."""
    long = []
    for p in sorted(LIB.rglob("*.py")):
        src = p.read_text().splitlines()
        for n in ast.walk(ast.parse("\n".join(src))):
            if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 65:
                body = n.body[1:] if ast.get_docstring(n) else n.body
                head = src[body[0].lineno - 2:body[0].lineno + 1]
                if not any(line.strip().startswith("#") for line in head):
                    long.append(f"{p.relative_to(LIB.parent)}:{n.name}")
    assert long == [], long


def top_level_names() -> dict[str, list[str]]:
    """name -> the lib modules that define it at top level (functions, classes, constants)."""
    out: dict[str, list[str]] = {}
    for p in sorted(LIB.rglob("*.py")):
        for n in ast.parse(p.read_text()).body:
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)):
                names = [n.name]
            elif isinstance(n, ast.Assign):
                names = [t.id for t in n.targets if isinstance(t, ast.Name)]
            elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
                names = [n.target.id]
            else:
                names = []
            for name in names:
                if name != "__all__":
                    out.setdefault(name, []).append(str(p.relative_to(LIB.parent)))
    return out


def test_no_name_is_defined_in_two_modules():
    """One stage 05 for every kind of target: no unit, job or stage function defined twice
    (a name that means two things in two rooms is a trap for a reader)."""
    twice = {k: v for k, v in top_level_names().items() if len(v) > 1}
    assert twice == {}


def test_the_engine_api_is_what_the_rest_of_lib_imports():
    """Outside the engine, lib imports engine names from ``lib.engine`` only, and only names
    of its ``__all__`` (the public API); every function and class there has a numpydoc
    docstring (data constants are documented where they are defined)."""
    import inspect

    import lib.engine as engine

    public = set(engine.__all__)
    bad = []
    for p in sorted(LIB.rglob("*.py")):
        if "engine" in p.relative_to(LIB).parts:
            continue
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.ImportFrom) and n.module and "engine" in n.module.split("."):
                if n.module not in ("engine", "lib.engine"):
                    bad.append(f"{p.name}: from {n.module} (use lib.engine)")
                bad += [f"{p.name}: {a.name} is not in lib.engine.__all__" for a in n.names
                        if a.name not in public]
    assert bad == []
    undocumented = []
    for name in engine.__all__:
        obj = getattr(engine, name)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        doc = inspect.getdoc(obj) or ""
        need = ["Parameters\n----------"] + (["Returns\n-------"] if inspect.isfunction(obj)
                                             else [])
        if not all(s in doc for s in need):
            undocumented.append(name)
    assert undocumented == []


def test_the_engine_raises_one_exception_type():
    """Bad input to the engine raises EngineError (a ValueError), nothing else."""
    raised = []
    for p in sorted((LIB / "engine").glob("*.py")):
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.Raise) and isinstance(n.exc, ast.Call) and \
                    isinstance(n.exc.func, ast.Name) and n.exc.func.id != "EngineError":
                raised.append(f"{p.name}:{n.lineno} {n.exc.func.id}")
    assert raised == []


def test_no_engine_parameter_has_a_default_tr():
    """A time constant derived at a silent TR is wrong at every other TR: ``tr`` is required
    wherever the engine takes it."""
    import inspect

    import lib.engine as engine

    defaults = []
    for mod in (engine.folds, engine.ridge, engine.inference, engine.partition,
                engine.paired, engine.combine):
        for name, fn in inspect.getmembers(mod, inspect.isfunction):
            p = inspect.signature(fn).parameters.get("tr")
            if p is not None and p.default is not inspect.Parameter.empty:
                defaults.append(f"{mod.__name__}.{name}")
    assert defaults == []


def test_the_reduction_does_not_call_back_into_the_fits():
    """Stage 05 runs one way: units fit (encoding, matrix_encoding), the reduction reads their
    results through the job (lib.job), never calling back into the fitting modules."""
    g = module_imports()
    assert not ({"lib.encoding", "lib.matrix_encoding", "lib.stage05"} & g["lib.reduction"])
    assert not ({"lib.encoding", "lib.stage05"} & g["lib.units"])
