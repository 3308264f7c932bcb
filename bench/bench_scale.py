"""Scaling benchmark (run by hand; results in docs/benchmarks.md).

    python bench/bench_scale.py                # everything (~15 min on 2 cores)
    python bench/bench_scale.py --only unit    # unit | cluster | shared | projection

unit:       seconds and peak memory of one stage-05 unit (one subject, one condition, with its
            chance fit) at the real derivative's grid (3 mm MNI) for a pieman run (300 TRs) and a
            tunnel run (1040 TRs), GPT-2-sized word vectors (768 x 5 delays); each in a fresh
            process so its peak RSS is its own.
cluster:    stage 05 on the 24-subject synthetic profile, serially vs a 2-worker LocalCluster.
shared:     the same 24 subjects with one design per group of 8 subjects vs one per subject.
projection: units, CPU-hours, GPU-hours, worker memory and download size for
            narratives-pieman-all and narratives-all, from the measured unit costs and the
            dataset's metadata (subjects per story, story lengths).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
ROOT = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("BENCH_DIR", tempfile.gettempdir())) / "narratives-bench-scale"


def _fake_index(run_dir, stories, dim=768, seed=0):
    import numpy as np
    import pandas as pd

    from lib import transcripts

    rng = np.random.default_rng(seed)
    rows = []
    for story in stories:
        n = len(transcripts.read_transcript(run_dir / "transcripts" / f"{story}.tsv"))
        p = run_dir / "acts" / f"{story}.npz"
        p.parent.mkdir(parents=True, exist_ok=True)
        np.savez(p, activations=rng.standard_normal((n, dim)).astype(np.float32))
        rows.append(dict(condition="raw", story=story, seed=0, model="fake", model_tag="fake",
                         fingerprint="0", path=str(p), all_layers_path="", surprisal_path="",
                         leaky=False, cache_hit=False))
    return pd.DataFrame(rows)


def _job(root, run_dir, stories, subjects=None, n_perm=0, spaces=(), dim=768):
    import nibabel as nib

    from lib import data, encoding, transcripts
    from lib.engine.inference import NullSpec

    m = data.build_manifest(root, subjects=subjects, stories=stories, include_excluded=True,
                            check_integrity=False)
    transcripts.build_transcripts(m, run_dir / "transcripts")
    st = encoding.Settings(null=NullSpec(n_perm=n_perm), perm_conditions=("raw",),
                           spaces=tuple(spaces), tr=data.single_tr(m))
    mask = nib.load(str(root / "derivatives/synthetic-truth/brain_mask.nii.gz"))
    return encoding.volume_job(m, run_dir / "transcripts", _fake_index(run_dir, stories, dim),
                             run_dir / "brain_score", mask, st)


def unit_child(story: str) -> None:
    """In a fresh process: one unit (1 subject, raw + chance) at the real grid."""
    from lib import units
    from lib.cluster import limit_threads

    limit_threads(2)
    root = WORK / f"realgrid-{story}"
    job = _job(root, WORK / f"run-{story}", [story], ["sub-002"])
    t0 = time.perf_counter()
    status = units.fit_unit(job, units.Unit("raw", 0, ("sub-002",)))
    sec = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_vox = int(job.runs.iloc[0].n_trs)
    print(json.dumps(dict(story=story, seconds=round(sec, 1), peak_rss_mb=round(rss),
                          n_trs=n_vox, status=status[0]["status"])))


def unit() -> dict:
    from lib.synthetic import make_mini

    os.environ["NARRATIVES_ROOT"] = str(WORK)
    out = {}
    for story in ("pieman", "tunnel"):
        root = WORK / f"realgrid-{story}"
        t0 = time.perf_counter()
        make_mini(root, resolution_mm=3, subjects=["sub-002"], stories=[story])
        gen = time.perf_counter() - t0
        r = subprocess.run([sys.executable, __file__, "--child", story], capture_output=True,
                           text=True, env={**os.environ, "NARRATIVES_ROOT": str(WORK)})
        res = json.loads(r.stdout.strip().splitlines()[-1])
        import nibabel as nib

        mask = nib.load(str(root / "derivatives/synthetic-truth/brain_mask.nii.gz"))
        res["n_voxels"] = int((mask.get_fdata() > 0).sum())
        res["generate_s"] = round(gen, 1)
        out[story] = res
        print(f"| {story} | {res['n_trs']} | {res['n_voxels']} | {res['seconds']} s | "
              f"{res['peak_rss_mb']} MB |", flush=True)
    (WORK / "unit.json").write_text(json.dumps(out))
    return out


def _stage(job, client=None, per_unit=8):
    from lib import stage05

    t0 = time.perf_counter()
    stage05.run_stage(job, client=client, subjects_per_unit=per_unit, progress=False)
    return time.perf_counter() - t0


def cluster_bench() -> None:
    from lib import cluster
    from lib.synthetic import make_mini

    os.environ["NARRATIVES_ROOT"] = str(WORK)
    subs = [f"sub-{i:03d}" for i in range(2, 26)]
    root = make_mini(WORK / "scale24", subjects=subs)
    serial = _stage(_job(root, WORK / "scale-serial", ["pieman"], n_perm=200, spaces=("word_rate",),
                         dim=64))
    with cluster.client_for("local", 2, {"workers": 2}) as client:
        local = _stage(_job(root, WORK / "scale-local", ["pieman"], n_perm=200,
                            spaces=("word_rate",), dim=64), client)
    print(f"| 24 subjects, 6 mm, raw + word_rate + chance, 200 permutations | {serial:.0f} s | "
          f"{local:.0f} s |", flush=True)


def shared() -> None:
    from lib.synthetic import make_mini

    os.environ["NARRATIVES_ROOT"] = str(WORK)
    subs = [f"sub-{i:03d}" for i in range(2, 26)]
    root = make_mini(WORK / "scale24", subjects=subs)
    t8 = _stage(_job(root, WORK / "shared-8", ["pieman"]), per_unit=8)
    t1 = _stage(_job(root, WORK / "shared-1", ["pieman"]), per_unit=1)
    print(f"| 24 subjects, 768-d features | one design per 8 subjects: {t8:.0f} s | "
          f"one per subject: {t1:.0f} s | saving {t1 / t8:.1f}x |", flush=True)


def runs_of(stories: list[str]) -> dict[str, list[str]]:
    """subject -> its scans of ``stories`` (from the dataset's file lists), after the authors'
    exclusions."""
    import re

    from lib import data
    from lib.paths import Paths

    files = json.loads((Paths().metadata / "subject_files.json").read_text())
    excl = data.scan_exclusions()
    out = {}
    for sub, f in files.items():
        names = f["bold"]["MNI152NLin2009cAsym"].get("sm6", [])
        for path in names:
            m = re.search(r"_task-([a-z0-9]+)(?:_run-(\d))?_", path)
            if not m or m.group(1) not in stories:
                continue
            story, run = m.group(1), int(m.group(2)) if m.group(2) else None
            if (sub, story, run) in excl or (sub, story, None) in excl:
                continue
            out.setdefault(sub, []).append(story)
    return out


def projection() -> None:
    """Costs of the big profiles from measured unit costs (CPU, 2 cores) and metadata. A unit
    fit costs about a * TRs^b (fitted to the pieman and tunnel units); a subject's TRs are the
    sum over its scans of its stories' scan lengths (event_meta onset + duration + tail)."""
    import numpy as np

    from lib.paths import Paths

    meas = json.loads((WORK / "unit.json").read_text())
    n = np.array([meas["pieman"]["n_trs"], meas["tunnel"]["n_trs"]], float)
    sec = np.array([meas["pieman"]["seconds"], meas["tunnel"]["seconds"]], float)
    b = np.log(sec[1] / sec[0]) / np.log(n[1] / n[0])
    a = sec[0] / n[0] ** b
    mem = np.array([meas["pieman"]["peak_rss_mb"], meas["tunnel"]["peak_rss_mb"]], float)
    meta = json.loads((Paths().metadata / "event_meta.json").read_text())
    # a scan's TRs: its last event's end (slumlordreach holds two stories) + the tail
    length = {t: max(e["onset"] + e["duration"] for e in meta[t].values()
                     if isinstance(e, dict) and "onset" in e) + 10 for t in meta}
    # raw, 3 seeds x (sft, control, scrambled), random, 5 feature spaces (+ chance in each unit)
    conditions = 1 + 9 + 1 + 5
    print("| profile | subjects, scans | fit units | CPU-hours | GPU-hours (SFT + extraction) |"
          " memory / worker | download |")
    print("|---|---|---|---|---|---|---|")
    for name, stories in (("narratives-pieman-all", ["pieman", "tunnel"]),
                          ("narratives-all", ["21styear", "black", "bronx", "forgot", "lucy",
                                              "merlin", "notthefallintact", "pieman",
                                              "piemanpni", "prettymouth", "shapesphysical",
                                              "shapessocial", "sherlock", "slumlordreach",
                                              "tunnel"])):
        scans = runs_of(stories)
        T = np.array([sum(length[s] for s in v) for v in scans.values()], float)
        unit_s = a * T ** b
        fits_h = conditions * unit_s.sum() / 3600
        null_h = 2 * 3 * unit_s.sum() / 3600          # raw and sft group nulls ~ 3 fits each
        part_h = 4 * 20 * 0.5 * unit_s.sum() / 3600   # partition: 4 fits x 20 weightings
        n_scans = sum(len(v) for v in scans.values())
        trs = sum(length[s] for v in scans.values() for s in v)
        gpu_h = (500 * 0.071 * 3 * 3 * len(stories) + 10 * 13 * len(stories)) / 3600
        disk = trs * meas["pieman"]["n_voxels"] * 4 * 0.55 / 1e9   # float32 in the mask, gzip
        worker = np.interp(T.max(), n, mem, right=mem[1] * T.max() / n[1]) / 1024
        print(f"| {name} | {len(T)}, {n_scans} | {conditions * len(T)} | "
              f"{fits_h + null_h + part_h:.0f} | {gpu_h:.1f} | {worker:.1f} GB | "
              f"~{disk:.0f} GB |", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        unit_child(sys.argv[2])
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", choices=["unit", "cluster", "shared", "projection"])
    a = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    for name, fn in (("unit", unit), ("cluster", cluster_bench), ("shared", shared),
                     ("projection", projection)):
        if a.only in (None, name):
            fn()
