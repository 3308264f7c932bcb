"""Follow the job through one stage-05 unit: which modules ("rooms") it enters and how often the
path climbs back into a module that is still waiting below it on the call stack.

    python bench/walk_job.py [--run results/mini]

Fits the raw model's unit of the first subject of a run's volumes (from its manifest and
activations index, into a temporary folder, so nothing cached is reused) with ``sys.setprofile``
watching every call of a ``lib`` function that receives the job (a parameter named ``job``, or
``self`` being the job). Counted on that sequence of calls:

* rooms: distinct modules;
* stays: maximal runs of consecutive calls in one module;
* returns: stays in a module the path had already left;
* climbs: calls into a module that is already on the call stack below the caller (the callee
  hands the job back up: ``encoding`` -> ``job`` -> ``encoding``).

Runs on this checkout's code; the same script at an older commit measures the old path
(``git worktree add``; it uses the old entry points where the new ones are missing).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_job(run: Path, out: Path):
    from lib import data, features, geometry

    manifest = data.read_manifest(run / "data" / "data_manifest.csv")
    index = features.read_index(run / "features" / "activations_index.csv")
    mask = geometry.brain_mask(manifest, "auto")
    labels = geometry.roi_labels_for(manifest, "auto")
    tr = data.single_tr(manifest)
    try:                                    # one stage 05 for every kind of target
        from lib import encoding
        from lib.job import Settings

        settings = Settings(tr=tr)
        return encoding.volume_job(manifest, run / "transcripts", index, out, mask, settings,
                                   labels)
    except (ImportError, AttributeError, TypeError):     # the volume-only stage 05 before it
        from lib import encoding

        return encoding.make_job(manifest, run / "transcripts", index, out, mask,
                                 encoding.Settings(tr=tr), labels)


def fit(job, subject: str):
    try:
        from lib import units

        return units.fit_unit(job, units.Unit("raw", 0, (subject,)))
    except ImportError:
        from lib import encoding

        return encoding.fit_unit(job, encoding.Unit("raw", 0, (subject,)))


def stage(job, subject: str):
    """The whole stage 05 of the job (every unit, then the reduction)."""
    try:
        from lib import stage05

        return stage05.run_stage(job, progress=False)["units"].to_dict("records")
    except ImportError:
        from lib import brain_score

        return brain_score.run_stage(job, progress=False)["units"].to_dict("records")


METHODS = True      # count the job's own methods as rooms too (--functions: only functions)


def walk(job, subject: str, run=fit) -> dict:
    """Trace ``run`` (one unit fit, or the whole stage); the counts of the module docstring."""
    calls = []                 # (module, call-stack modules below) per call that gets the job
    stack = []

    def prof(frame, event, arg):
        if event == "call":
            mod = frame.f_globals.get("__name__", "")
            holds = frame.f_locals.get("job") is job or \
                (METHODS and frame.f_locals.get("self") is job)
            if mod.startswith("lib") and holds:
                calls.append((mod, [m for m in stack if m]))
            stack.append(mod if mod.startswith("lib") and holds else None)
        elif event == "return" and stack:
            stack.pop()

    sys.setprofile(prof)
    try:
        status = run(job, subject)
    finally:
        sys.setprofile(None)
    seq = [m for m, _ in calls]
    stays = [m for i, m in enumerate(seq) if i == 0 or seq[i - 1] != m]
    returns = sum(1 for i, m in enumerate(stays) if m in stays[:i])
    climbs = sum(1 for m, below in calls if below and m != below[-1] and m in below[:-1])
    return dict(status=status[0]["status"], calls=len(seq), rooms=sorted(set(seq)),
                n_rooms=len(set(seq)), stays=len(stays), returns=returns, climbs=climbs,
                path=" > ".join(stays))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", default="results/mini")
    ap.add_argument("--stage", action="store_true", help="the whole stage, not one unit")
    ap.add_argument("--functions", action="store_true",
                    help="follow only functions the job is passed to, not its own methods")
    a = ap.parse_args()
    global METHODS
    METHODS = not a.functions
    with tempfile.TemporaryDirectory() as tmp:
        job = build_job(Path(a.run), Path(tmp) / "brain_score")
        sub = sorted(job.runs.subject.unique())[0]
        job = replace(job, out_dir=str(Path(tmp) / "brain_score"))
        res = walk(job, sub, stage if a.stage else fit)
    for k, v in res.items():
        print(f"{k}: {v if k != 'path' else v[:2000]}")


if __name__ == "__main__":
    main()
