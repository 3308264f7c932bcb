"""Where units of work run: in this process, on a local Dask cluster, on SLURM, or on an existing
Dask scheduler -- chosen by the profile key ``cluster``.

* ``none`` (default): serially, in this process (the units are the same functions).
* ``local``: a ``dask.distributed.LocalCluster`` of ``workers`` processes with ``threads_per_worker``
  threads; every BLAS/OpenMP/torch pool inside a worker is capped at its thread count so
  workers x threads never exceeds the CPUs this process may use (:func:`available_cpus`).
* ``slurm``: ``dask_jobqueue.SLURMCluster`` built from the profile's ``slurm`` block (queue,
  cores, memory, walltime, processes, gpus, job_extra_directives, ...), scaled to ``jobs``.
* ``tcp://host:port``: join an existing scheduler.

Units are plain functions of files in, files out (``fit(job, unit)``), so all four run the same
code. A worker that dies mid-task loses nothing: its task is retried on another worker
(``retries``); results written by units are atomic and keyed by their inputs, so a rerun
recomputes only what is missing.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Callable, Iterable

from tqdm.auto import tqdm


def available_cpus() -> int:
    """CPUs this process may run on (affinity / cgroup aware where the OS says so)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def busy_cpus(sample_s: float = 0.3) -> float:
    """How many of the CPUs this process may use other processes keep busy right now: the
    non-idle share of those CPUs' time between two reads of ``/proc/stat`` ``sample_s`` apart,
    while this thread sleeps (Linux; 0.0 where it cannot be read)."""
    try:
        mine = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    except AttributeError:
        return 0.0

    def read():
        total = idle = 0
        with open("/proc/stat") as f:
            for line in f:
                name, *v = line.split()
                if name in mine:
                    v = [int(x) for x in v[:8]]      # user .. steal (guest time is inside user)
                    total, idle = total + sum(v), idle + v[3] + v[4]   # idle + iowait
        return total, idle

    try:
        (t0, i0), _ = read(), time.sleep(sample_s)
        t1, i1 = read()
    except (OSError, ValueError):
        return 0.0
    total = t1 - t0
    return 0.0 if total <= 0 else len(mine) * (total - (i1 - i0)) / total


def thread_count(threads: int | str | None = "auto") -> int:
    """The one thread setting for every pool: ``auto`` = the CPUs available that other processes
    are not keeping busy right now (a process counts from 0.65 of a CPU; at least 1), else the
    number asked for (never more than available).

    Why: two processes whose pools together ask for more threads than there are cores lose far
    more than their fair share to threads waiting on each other (the ridge bench beside a 2-thread
    torch process: 3.4x slower with 2 threads, 2.0x with 1 -- docs/benchmarks.md). Set a number
    for bit-for-bit equal reruns whatever else the machine runs."""
    n = available_cpus()
    if threads in (None, "auto", 0):
        return max(1, n - int(busy_cpus() + 0.35))
    return max(1, min(int(threads), n))


def quiet_threads_env() -> dict:
    """Environment for processes that share cores with others: OpenMP threads (torch, BLAS)
    sleep when idle instead of spinning -- two processes with spinning pools on the same cores
    slowed extraction more than 9x (docs/benchmarks.md)."""
    return {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0", "OPENBLAS_THREAD_TIMEOUT": "4"}


def limit_threads(n: int) -> None:
    """Cap every thread pool of this process (BLAS, OpenMP, torch) at ``n``; also sets the
    environment for child processes. Call before heavy work starts."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
        os.environ[var] = str(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:
        pass
    try:
        import torch

        torch.set_num_threads(n)
    except (ImportError, RuntimeError):
        pass


def use_threads(threads: int | str | None = "auto") -> int:
    """A stage's thread setting: resolve it (:func:`thread_count`), cap every pool of this
    process at it (:func:`limit_threads`), keep freed memory for reuse
    (:func:`keep_freed_memory`) and say so. Returns the number."""
    n = thread_count(threads)
    limit_threads(n)
    kept = keep_freed_memory()
    print(f"threads per pool: {n} of {available_cpus()} CPUs"
          + ("; freed memory kept for reuse" if kept else ""))
    return n


#: glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory(trim_above: int = 1 << 30) -> bool:
    """Let this process reuse the memory it frees instead of handing it back to the kernel:
    glibc serves no block from a fresh mmap and trims its heap only past ``trim_above`` bytes.

    torch frees and reallocates its large buffers (activations, logits, gradients) at every
    training step and forward pass. By default glibc maps each block over 32 MiB afresh and
    unmaps it when freed, so every reuse page-faults on zeroed pages: 210,000 faults per SFT
    step of SmolLM2-135M on 2 cores, 0.8-1.2 s of kernel time, against 40,000 with this
    setting; steps took 2.4-2.7 s instead of 2.8-3.6 s, evaluation batches 2.7 s instead of
    3.4-4.5 s (docs/benchmarks.md). Peak memory is unchanged, but it is returned to the system
    only when the process ends. Linux with glibc only; left alone (False) elsewhere, or when
    the environment already sets ``MALLOC_MMAP_MAX_`` or ``MALLOC_TRIM_THRESHOLD_``."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux") or any(
            v in os.environ for v in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                         int(trim_above)))
    except (OSError, AttributeError):     # not glibc (musl has no mallopt)
        return False


def map_units(fn: Callable, job, units: Iterable, client=None, desc: str = "units",
              progress: bool = True, retries: int = 2, resources: dict | None = None) -> list:
    """``[fn(job, u) for u in units]``, serially or on ``client`` (a dask.distributed Client);
    ``resources`` (e.g. ``{"GPU": 1}``) restricts units to workers that have them."""
    units = list(units)
    if client is None:
        out = []
        for u in tqdm(units, desc=desc, disable=not progress):
            out.append(fn(job, u))
        return out
    from dask.distributed import as_completed

    job_f = client.scatter(job, broadcast=True) if job is not None else None
    futures = [client.submit(fn, job_f, u, pure=False, retries=retries, resources=resources,
                             key=f"{desc.replace(' ', '-')}-{i}") for i, u in enumerate(units)]
    done = {}
    bar = tqdm(total=len(futures), desc=desc, disable=not progress)
    for fut in as_completed(futures):
        done[fut.key] = fut.result()
        bar.update(1)
    bar.close()
    return [done[f.key] for f in futures]


def gather_calls(client, fn: Callable, args_list: list[tuple]) -> list:
    """``[fn(*a) for a in args_list]`` -- on the cluster in parallel when there is a client
    (arguments may be futures: the work then runs where their data lives)."""
    if client is None:
        return [fn(*a) for a in args_list]
    return client.gather([client.submit(fn, *a, pure=False) for a in args_list])


def _worker_threads(n: int):
    """A WorkerPlugin capping every thread pool of a Dask worker at ``n``."""
    from distributed import WorkerPlugin

    class LimitThreads(WorkerPlugin):
        name = "narratives-limit-threads"

        def setup(self, worker):
            limit_threads(n)

    return LimitThreads()


def _env(n: int) -> dict:
    return {**{v: str(n) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
            **quiet_threads_env()}


def slurm_cluster(slurm: dict, threads: int | None = None):
    """A ``dask_jobqueue.SLURMCluster`` from the profile's ``slurm`` block (not started: scale it).

    Keys: queue, account, cores, processes, memory, walltime, gpus (per job), job_extra_directives,
    local_directory, python, interface. Each worker process gets cores / processes threads and
    caps its BLAS/OpenMP pools there (``job_script_prologue``); with gpus each worker advertises
    a ``GPU`` resource so GPU units run one per GPU.
    """
    from dask_jobqueue import SLURMCluster

    cores = int(slurm.get("cores", 8))
    processes = int(slurm.get("processes", 1))
    per = threads or max(1, cores // processes)
    extra = list(slurm.get("job_extra_directives", []))
    gpus = int(slurm.get("gpus", 0))
    if gpus:
        extra.append(f"--gres=gpu:{gpus}")
    kw = dict(queue=slurm.get("queue"), account=slurm.get("account"), cores=cores,
              processes=processes, memory=str(slurm.get("memory", "32GB")),
              walltime=str(slurm.get("walltime", "04:00:00")), job_extra_directives=extra,
              job_script_prologue=[f"export {k}={v}" for k, v in _env(per).items()],
              worker_extra_args=(["--resources", f"GPU={max(1, gpus // processes)}"]
                                 if gpus else []))
    for k in ("local_directory", "python", "interface", "log_directory"):
        if slurm.get(k):
            kw[k] = slurm[k]
    return SLURMCluster(**{k: v for k, v in kw.items() if v is not None})


def make_client(spec, threads: int | str = "auto", profile: dict | None = None):
    """(client, cluster) for ``spec``: ``local``, ``slurm`` or a scheduler address."""
    import dask
    from distributed import Client, LocalCluster

    profile = profile or {}
    n = thread_count(threads)
    if spec == "local":
        workers = max(1, min(int(profile.get("workers", 2)), n))
        per = max(1, n // workers)            # workers x threads never exceeds the CPUs
        with dask.config.set({"distributed.nanny.pre-spawn-environ": _env(per)}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=profile.get("dashboard", ":0"),
                                   resources=profile.get("resources"))
        client = Client(cluster)
        client.register_plugin(_worker_threads(per))
    elif spec == "slurm":
        cluster = slurm_cluster(profile.get("slurm", {}))
        cluster.scale(jobs=int(profile.get("slurm", {}).get("jobs", 1)))
        client = Client(cluster)
    elif isinstance(spec, str) and "://" in spec:
        cluster, client = None, Client(spec)
    else:
        raise ValueError(f"cluster must be none, local, slurm or a scheduler address "
                         f"(tcp://host:8786), got {spec!r}")
    print(f"Dask dashboard: {client.dashboard_link}", flush=True)
    return client, cluster


@contextmanager
def client_for(spec=None, threads: int | str = "auto", profile: dict | None = None):
    """A Dask client for ``spec`` (see module docstring), or None for the serial path."""
    if spec in (None, "none", "serial", False):
        yield None
        return
    client, cluster = make_client(spec, threads, profile or {})
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def gpu_resources(client) -> dict | None:
    """``{"GPU": 1}`` when the cluster's workers advertise GPUs, else no constraint."""
    if client is None:
        return None
    workers = client.scheduler_info().get("workers", {}).values()
    return {"GPU": 1} if any(w.get("resources", {}).get("GPU") for w in workers) else None
