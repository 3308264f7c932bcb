"""Scaling out: the same units serially and on Dask (a LocalCluster here; SLURM's job script)."""
import os
import shutil
import threading
import time

import numpy as np
import pytest

from lib import cluster, encoding, stage05, units
from lib.synthetic import make_mini

from conftest import stage05_job

SUBJECTS = [f"sub-{i:03d}" for i in range(2, 14)]     # 12 subjects, none excluded


@pytest.fixture(scope="module")
def twelve(paths, tmp_path_factory):
    root = make_mini(tmp_path_factory.mktemp("bids12") / "mini", resolution_mm=12,
                     subjects=SUBJECTS, paths=paths)
    serial = stage05_job(root, tmp_path_factory.mktemp("serial"), paths, n_perm=300)
    res = stage05.run_stage(serial, subjects_per_unit=1, progress=False)
    return root, res


def _kill_a_worker_when_busy(client, job, stop, killed):
    """Fault injection: once the first unit result exists, kill one worker process outright
    (its nanny starts a fresh one; the scheduler reruns what it was doing)."""
    first = job.result_path("raw", 0, SUBJECTS[0]).parent
    while not stop.is_set():
        if first.exists() and any(first.glob("*.npz")):
            busy = client.processing()
            w = next((a for a, tasks in sorted(busy.items()) if tasks), sorted(busy)[0])
            try:
                client.run(os._exit, 1, workers=[w])
            except Exception:       # the worker dies before it can answer
                pass
            killed.append(w)
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_local_cluster_equals_serial_despite_a_killed_worker(twelve, paths, tmp_path):
    root, serial = twelve
    job = stage05_job(root, tmp_path / "dask", paths, n_perm=300)
    with cluster.client_for("local", 2, {"workers": 2}) as client:
        stop, killed = threading.Event(), []
        killer = threading.Thread(target=_kill_a_worker_when_busy,
                                  args=(client, job, stop, killed))
        killer.start()
        res = stage05.run_stage(job, subjects_per_unit=1, client=client, progress=False)
        stop.set()
        killer.join()
        assert killed and killed[0] not in client.scheduler_info()["workers"]  # it did die
        again = stage05.run_stage(job, subjects_per_unit=1, client=client, progress=False)
    a = serial["scores"].sort_values(["condition", "subject", "target"]).reset_index(drop=True)
    b = res["scores"].sort_values(["condition", "subject", "target"]).reset_index(drop=True)
    np.testing.assert_allclose(a.brain_score, b.brain_score, atol=1e-6)
    np.testing.assert_allclose(a.chance_score, b.chance_score, atol=1e-6)
    ga, gb = serial["group"]["raw"], res["group"]["raw"]
    assert np.mean(ga["p"] == gb["p"]) > 0.999 and np.array_equal(ga["fdr"], gb["fdr"])
    assert set(again["units"].status) == {"cached"}                # a rerun computes no unit


@pytest.mark.slow
def test_bad_bold_fails_its_unit_on_the_cluster(twelve, paths, tmp_path):
    root, _ = twelve
    bad_root = tmp_path / "bids"
    shutil.copytree(root, bad_root)
    job = stage05_job(bad_root, tmp_path / "run", paths, n_perm=0)
    bad = bad_root / "sub-005/func/sub-005_task-pieman_run-1_bold.nii.gz"
    bad.write_bytes(b"not a nifti")             # broken after the manifest was made
    with cluster.client_for("local", 2, {"workers": 2}) as client:
        with pytest.raises(units.UnitsFailed, match=r"sub-005: .*sub-005_task-pieman_run-1"):
            stage05.run_stage(job, subjects_per_unit=3, client=client, progress=False)
    done = [s for s in SUBJECTS if job.result_path("raw", 0, s).exists()]
    assert done == [s for s in SUBJECTS if s != "sub-005"]


def test_slurm_job_script_from_a_profile():
    slurm = dict(queue="gpu", account="lab", cores=8, processes=2, memory="64GB",
                 walltime="02:00:00", gpus=2, job_extra_directives=["--constraint=a100"])
    c = cluster.slurm_cluster(slurm)
    try:
        script = c.job_script()
    finally:
        c.close()
    for line in ("#SBATCH -p gpu", "#SBATCH -A lab", "#SBATCH -t 02:00:00",
                 "#SBATCH --gres=gpu:2", "#SBATCH --constraint=a100",
                 "export OMP_NUM_THREADS=4", "--resources GPU=1", "--nworkers 2"):
        assert line in script, (line, script)


def test_thread_setting_never_exceeds_the_cpus(monkeypatch):
    n = cluster.available_cpus()
    monkeypatch.setattr(cluster, "busy_cpus", lambda sample_s=0.3: 0.1)
    assert cluster.thread_count("auto") == n and cluster.thread_count(10_000) == n
    assert cluster.thread_count(1) == 1
    # CPUs that other processes keep busy are not counted by "auto" (at least one thread)
    monkeypatch.setattr(cluster, "busy_cpus", lambda sample_s=0.3: n - 0.2)
    assert cluster.thread_count("auto") == 1
    monkeypatch.setattr(cluster, "busy_cpus", lambda sample_s=0.3: 1.0)
    assert cluster.thread_count("auto") == max(1, n - 1)
    assert cluster.thread_count(2) == min(2, n)      # an explicit number is kept


def test_busy_cpus_sees_a_spinning_process():
    """A spinning process adds about one busy CPU, unless the others already keep every CPU
    busy (a CI machine under load): the check holds whatever else runs."""
    import subprocess
    import sys
    import time

    quiet = cluster.busy_cpus(0.5)
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        busy = cluster.busy_cpus(0.5)
    finally:
        spin.kill()
        spin.wait()
    assert 0.0 <= quiet <= cluster.available_cpus()
    n = cluster.available_cpus()
    assert busy >= 0.8 and busy >= min(quiet + 0.5, n - 0.35), (quiet, busy, n)
