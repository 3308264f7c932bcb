"""End to end: the reduced embedded profile (tiny model, 2 analysed subjects, SYNTHETIC BOLD)
through papermill, the master report, its HTML, the stage cache and a failing stage."""
import json
from pathlib import Path

import nbformat
import pytest

from conftest import run_pipeline as _run

ROOT = Path(__file__).resolve().parent.parent


def outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


@pytest.mark.slow
def test_report_is_complete(quick_run):
    out, run_dir, _, _ = quick_run
    nb = nbformat.read(out / "total.ipynb", 4)
    outs = outputs(nb)
    assert not [o for o in outs if o.output_type == "error"]
    images = [o for o in outs if "image/png" in o.get("data", {})]
    assert len(images) >= 3
    text = json.dumps([o.get("data", {}) for o in outs])
    assert "sft - raw" in text and "mean_delta" in text          # the Δ table
    assert "SYNTHETIC BOLD" in text
    html = (out / "total.html").read_text()
    assert html.count("data:image/png;base64") >= 3
    for stage in ["01_data", "02_transcripts", "03_features", "04_sft", "05_brain_score",
                  "06_compare"]:
        snb = nbformat.read(run_dir / "notebooks" / f"{stage}.ipynb", 4)
        assert not [o for o in outputs(snb) if o.output_type == "error"], stage
    assert (run_dir / "data" / "data_manifest.csv").exists()
    assert (run_dir / "compare" / "delta_table.csv").exists()
    assert list((run_dir / "brain_score" / "maps").glob("*.nii.gz"))
    import pandas as pd

    sc = pd.read_csv(run_dir / "brain_score" / "scores.csv")
    assert set(sc.subject) == {"sub-002", "sub-003"}           # sub-001 excluded by the authors
    assert {"raw", "sft", "control", "scrambled", "random", "word_rate", "phonemes",
            "surprisal:raw"} <= set(sc.condition)
    assert sc.synthetic_bold.all()
    part = pd.read_csv(run_dir / "brain_score" / "partition.csv")     # the tested share is there
    assert {"joint", "unique:lm:sft", "unique_vs_placebo:lm:sft", "shared"} <= set(part.measure)
    assert "unique_vs_placebo:lm:raw" not in set(part.measure)         # only partition_null
    gt = pd.read_csv(run_dir / "brain_score" / "group_tests.csv")
    assert (gt.condition == "partition unique_vs_placebo:lm:sft").sum() >= 1


@pytest.mark.slow
def test_unchanged_stages_are_not_rerun(quick_run, project_root):
    out, run_dir, args, _ = quick_run
    p = _run(args[:-2], project_root)                               # no report this time
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.count("unchanged: reusing") == 6


#: columns that say how a run went, not what it computed
RUN_COLUMNS = {"seconds", "cache_hit"}


def _tables(run_dir) -> dict:
    import pandas as pd

    out = {}
    for p in sorted(run_dir.rglob("*.csv")):
        if "units" in p.parts:
            continue
        df = pd.read_csv(p)
        out[str(p.relative_to(run_dir))] = df.drop(columns=[c for c in df if c in RUN_COLUMNS])
    return out


@pytest.mark.slow
def test_a_forced_rerun_from_refitted_units_changes_only_run_records(quick_run, project_root):
    """Every stage re-executed and every stage-05 unit refitted: the tables are bit-for-bit
    the session's first run's but for timings and cache hits (both at one BLAS thread)."""
    import shutil

    import pandas as pd

    out, run_dir, args, _ = quick_run
    before = _tables(run_dir)
    shutil.rmtree(run_dir / "brain_score" / "units")
    p = _run(args[:-2] + ["--force"], project_root)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "reused no stage" in p.stdout
    after = _tables(run_dir)
    assert sorted(after) == sorted(before) and len(before) > 15
    for name, df in before.items():
        pd.testing.assert_frame_equal(after[name], df, check_exact=True, obj=name)


@pytest.mark.slow
def test_broken_stage_fails_with_its_name(quick_run, project_root):
    out, run_dir, args, _ = quick_run
    p = _run(["--profile", "params/quick.yaml", "--run", "broken", "--set",
              f"bids_root={out / 'bids'}", "--set", "model=no-such/model!"], project_root)
    assert p.returncode != 0
    assert "stage 03_features failed" in p.stderr and "03_features.ipynb" in p.stderr


def test_executed_notebooks_get_stable_cell_ids(tmp_path):
    """jupytext and papermill give new cells random ids: relabel makes them positions, so two
    runs of the same stage write the same notebook (and the same HTML)."""
    import nbformat

    from lib.pipeline import relabel

    def made():
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"),
                                             nbformat.v4.new_code_cell("x = 1")])
        nb.metadata["papermill"] = {"input_path": "/tmp/.x.input.ipynb"}
        path = tmp_path / "nb.ipynb"
        nbformat.write(nb, path)
        relabel(path, tmp_path / "notebooks" / "x.py")
        return path.read_text()

    a, b = made(), made()
    assert a == b
    nb = nbformat.reads(a, 4)
    assert [c.id for c in nb.cells] == ["cell-000", "cell-001"]
    assert nb.metadata.papermill["input_path"].endswith("x.py")


def test_a_stage_is_keyed_on_the_code_it_runs(tmp_path):
    """Docstrings, comments and modules a stage never imports leave its key alone; code it
    imports, even lazily inside a function, changes it."""
    from lib.pipeline import code_hash

    lib = tmp_path / "lib"
    (lib / "engine").mkdir(parents=True)
    (lib / "__init__.py").write_text('"""the package"""\n')
    (lib / "engine" / "__init__.py").write_text("from .core import f\n")
    (lib / "engine" / "core.py").write_text('"""core"""\ndef f():\n    """doc"""\n    return 1\n')
    (lib / "a.py").write_text("def g():\n    from .engine import f  # lazy\n    return f()\n")
    (lib / "unused.py").write_text("x = 1\n")
    src = tmp_path / "stage.py"
    src.write_text("from lib import a\n")
    h = code_hash(src, tmp_path)
    (lib / "engine" / "core.py").write_text('"""core, edited"""\ndef f():\n    # why\n'
                                            '    return 1\n')
    (lib / "unused.py").write_text("x = 2\n")
    assert code_hash(src, tmp_path) == h
    (lib / "engine" / "core.py").write_text("def f():\n    return 2\n")
    assert code_hash(src, tmp_path) != h


@pytest.mark.parametrize("run", ["lebel", "mini", "lebel-full"])
def test_committed_results_come_from_the_committed_code(run):
    """Every committed stage's key is the key its notebook, code and parameters give now: the
    committed report is what the committed code computes (rerun the profile when this fails)."""
    from pathlib import Path

    from lib.cache import read_sidecar
    from lib.pipeline import stage_keys

    d = Path(__file__).resolve().parent.parent / "results" / run
    params = json.loads((d / "params.json").read_text())
    stale = [stage for stage, _, key in stage_keys(params)
             if (read_sidecar(d / "notebooks" / f"{stage}.ipynb") or {}).get("key") != key]
    assert stale == [], f"results/{run}: stages {stale} are stale; rerun its profile"


def test_a_stage_key_holds_only_the_parameters_its_notebook_declares():
    """A stage-05 parameter leaves the keys of stages 01-04 alone, and changes 05's and 06's."""
    from lib.pipeline import load_profile, stage_keys

    p = load_profile(ROOT / "params" / "mini.yaml")
    before = {s: k for s, _, k in stage_keys(p)}
    after = {s: k for s, _, k in stage_keys({**p, "n_folds": 4})}
    assert [s for s in before if before[s] != after[s]] == ["05_brain_score", "06_compare"]


def test_an_unknown_profile_key_fails_with_the_known_ones(tmp_path):
    from lib.pipeline import ProfileError, check_profile, load_profile, main

    for p in (ROOT / "params").glob("*.yaml"):          # every embedded profile is known
        check_profile(load_profile(p), source=str(p))
    with pytest.raises(ProfileError, match=r"unknown parameter n_fold \(no notebook.*known: .*"
                                           r"n_folds"):
        check_profile({"n_fold": 3})
    bad = tmp_path / "bad.yaml"
    bad.write_text("profile: bad\nn_fold: 3\n")
    assert main(["--profile", str(bad), "--no-kernel"]) == 1
