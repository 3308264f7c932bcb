"""Benchmark: this ridge engine vs scikit-learn and himalaya on the same contiguous splits.

    python bench/bench_ridge.py                      # the full table (n in 1000, 3000; targets 1..50000)
    python bench/bench_ridge.py --trs 1000 --targets 5000   # one size, one line for scripts:
    python bench/bench_ridge.py --eigh 2304          # float64 eigh of one Gram: numpy vs torch
    ridge: engine=<s> sklearn=<s> himalaya=<s> speedup_sklearn=<x> speedup_himalaya=<x> max_abs_dr=<d>

Data: random features (p = 3072 = 768 x 4 delays) with a planted linear signal in half the targets.
Every method runs 5 contiguous outer folds (gap 5) and selects one alpha per target from the same
10 alphas: the engine on its 4 blocked inner folds (each standardised on its own rows); sklearn
RidgeCV(alpha_per_target=True) by its leave-one-out GCV (fit_intercept=True on raw data; its only
per-target mode; one decomposition per fold, and leaky on autocorrelated data); himalaya
KernelRidgeCV(kernel="linear") / RidgeCV on the engine's inner folds. Seconds are wall time of all
folds; peak memory is the child process's max RSS (each method runs in a fresh process).
max_abs_dr compares the methods' per-fold r with ONE fixed alpha (so selection rules do not enter):
it checks they fit the same model.
"""
import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ALPHAS = [10.0 ** k for k in range(-1, 9)]


def data(n, p, t, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p), dtype=np.float32)
    k = 64  # signal through a low-rank map: no (p, t) weight matrix, cheap for 50k targets
    B = rng.standard_normal((k, t), dtype=np.float32) * (3 / np.sqrt(p * k))
    B[:, t // 2:] = 0
    Y = rng.standard_normal((n, t), dtype=np.float32)
    XW = X @ rng.standard_normal((p, k), dtype=np.float32)
    for j in range(0, t, 5000):   # in column chunks: no second (n, t) matrix in memory
        Y[:, j:j + 5000] += XW @ B[:, j:j + 5000]
    return X, Y


GAP = 5


def _splits(n):
    """(train, test, inner folds) -- the engine's own folds."""
    from lib.engine.ridge import Layout, blocked_folds

    lay = Layout.single(n, "bench")
    return [(tr, te, blocked_folds(lay, 4, GAP, rows=tr)) for tr, te in blocked_folds(lay, 5, GAP)]


def _r(p, y):
    from lib.engine.ridge import np_pearson

    return np_pearson(p, y)


def run_method(method, n, p, t, alphas, threads, out):
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import numpy as np
    from threadpoolctl import threadpool_limits

    X, Y = data(n, p, t)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    scores = np.zeros((5, t), np.float32)
    with threadpool_limits(threads):
        t0 = time.perf_counter()
        if method.startswith("engine"):
            from lib.engine import Splitter, fit_score

            backend = method.split("-")[1]
            if backend == "torch":
                import torch

                torch.set_num_threads(threads)
            res = fit_score(X, Y, None, Splitter(gap=GAP), alphas=alphas, backend=backend, batch_targets=10000)
            scores = res.fold_scores[:, 0]
        elif method == "sklearn":
            from sklearn.linear_model import RidgeCV
            from sklearn.preprocessing import StandardScaler

            for f, (tr, te, _) in enumerate(_splits(n)):
                sc = StandardScaler().fit(X[tr])
                ysd = Y[tr].std(0)
                m = RidgeCV(alphas=alphas, alpha_per_target=len(alphas) > 1 and t > 1,
                            fit_intercept=True).fit(sc.transform(X[tr]), Y[tr] / ysd)
                pr = m.predict(sc.transform(X[te])).reshape(len(te), -1)
                scores[f] = _r(pr, Y[te])
        elif method.startswith("himalaya"):
            from himalaya.backend import set_backend
            from himalaya.kernel_ridge import KernelRidgeCV
            from himalaya.ridge import RidgeCV as HRidgeCV

            set_backend("numpy")
            for f, (tr, te, inner) in enumerate(_splits(n)):
                mu, sd = X[tr].mean(0), X[tr].std(0)
                Xz = (X - mu) / sd
                Yz = (Y - Y[tr].mean(0)) / Y[tr].std(0)
                pos = {v: i for i, v in enumerate(tr)}
                cv = [(np.array([pos[i] for i in fit]), np.array([pos[i] for i in val]))
                      for fit, val in inner]
                est = (KernelRidgeCV(kernel="linear", alphas=alphas, cv=cv,
                                     solver_params=dict(n_targets_batch=10000))
                       if n <= p else HRidgeCV(alphas=alphas, cv=cv,
                                               solver_params=dict(n_targets_batch=10000)))
                est.fit(Xz[tr], Yz[tr])
                scores[f] = _r(np.asarray(est.predict(Xz[te])).reshape(len(te), -1), Yz[te])
        secs = time.perf_counter() - t0
    np.save(out, scores)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MB (Linux: kB)
    Path(str(out) + ".json").write_text(json.dumps({"seconds": secs, "peak_mb": rss,
                                                    "data_mb": rss_data}))


def timed(method, n, p, t, alphas, threads, tmp):
    import numpy as np

    out = Path(tmp) / f"{method}_{n}_{t}_{len(alphas)}.npy"
    ctx = mp.get_context("spawn")
    pr = ctx.Process(target=run_method, args=(method, n, p, t, alphas, threads, out))
    pr.start()
    pr.join()
    if pr.exitcode != 0:
        raise RuntimeError(f"{method} failed (exit {pr.exitcode})")
    meta = json.loads(Path(str(out) + ".json").read_text())
    return meta["seconds"], meta["peak_mb"], np.load(out), meta.get("data_mb", 0)


def one_size(n, t, p, threads, methods, tmp, dr_targets=1000):
    import numpy as np

    row = {"trs": n, "targets": t}
    for m in methods:
        s, mb, _, data_mb = timed(m, n, p, t, ALPHAS, threads, tmp)
        row[m] = (s, mb)
        print(f"  n={n} targets={t} {m:>14}: {s:8.2f} s  peak {mb:7.0f} MB "
              f"(data alone {data_mb:.0f} MB)", flush=True)
    # agreement with one fixed alpha, on up to dr_targets targets
    tt = min(t, dr_targets)
    ref = timed(methods[0], n, p, tt, [1000.0], threads, tmp)[2]
    dr = 0.0
    for m in methods[1:]:
        other = timed(m, n, p, tt, [1000.0], threads, tmp)[2]
        dr = max(dr, float(np.nanmax(np.abs(ref - other))))
    row["max_abs_dr"] = dr
    return row


def eigh_timings(p: int, threads: int, repeats: int = 3) -> None:
    """Seconds per float64 eigendecomposition of a (p, p) Gram of smooth random features, in
    numpy's LAPACK and in torch's, and how far their ridge fits differ (hat matrices at one
    alpha: eigenvectors may differ in sign or within a repeated eigenvalue, fits may not)."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((p + p // 2, p)).astype(np.float32)
    X += 0.5 * np.cumsum(X, 0) / 30
    G = (X.T @ X).astype(np.float64)
    out = {}
    for name, f in (("numpy", np.linalg.eigh),
                    ("torch", lambda g: tuple(a.numpy() for a in
                                              torch.linalg.eigh(torch.from_numpy(g))))):
        f(G)
        t0 = time.perf_counter()
        for _ in range(repeats):
            lam, V = f(G)
        out[name] = ((time.perf_counter() - t0) / repeats, lam, V)
    alpha = float(np.median(out["numpy"][1]))
    W = [V @ np.diag(1 / (lam + alpha)) @ V.T for _, lam, V in out.values()]
    print(f"eigh p={p} threads={threads}: numpy {out['numpy'][0]:.3f} s, "
          f"torch {out['torch'][0]:.3f} s, max |ridge inverse difference| / max entry "
          f"{np.abs(W[0] - W[1]).max() / np.abs(W[0]).max():.1e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eigh", type=int, default=0, metavar="P",
                    help="only time one float64 eigh of a (P, P) Gram, numpy vs torch")
    ap.add_argument("--trs", type=int, nargs="*", default=[1000, 3000])
    ap.add_argument("--targets", type=int, nargs="*", default=[1, 1000, 5000, 50000])
    ap.add_argument("--features", type=int, default=3072)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="numpy", help="engine backend for the summary line")
    ap.add_argument("--sklearn-max-targets", type=int, default=5000,
                    help="skip sklearn above this many targets (it takes many minutes)")
    ap.add_argument("--tmp", default="/tmp/bench_ridge")
    ap.add_argument("--methods", nargs="*", default=None,
                    help="subset of engine-numpy engine-torch sklearn himalaya")
    a = ap.parse_args()
    if a.eigh:
        return eigh_timings(a.eigh, a.threads)
    Path(a.tmp).mkdir(parents=True, exist_ok=True)
    import platform

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"threads={a.threads}")
    rows = []
    for n in a.trs:
        for t in a.targets:
            methods = [f"engine-{a.backend}"]
            methods += [m for m in ("engine-torch", "engine-numpy") if m not in methods]
            if t <= a.sklearn_max_targets:
                methods.append("sklearn")
            methods.append("himalaya")
            if a.methods:
                methods = [m for m in methods if m in a.methods]
            rows.append(one_size(n, t, a.features, a.threads, methods, a.tmp))
    cols = ["engine-numpy", "engine-torch", "sklearn", "himalaya"]
    print("\n| TRs | targets | " + " | ".join(cols) + " | max abs dr |")
    print("|---|---|" + "---|" * (len(cols) + 1))
    for r in rows:
        cells = [f"{r[k][0]:.2f} s / {r[k][1]:.0f} MB" if k in r else "skipped" for k in cols]
        print(f"| {r['trs']} | {r['targets']} | " + " | ".join(cells) + f" | {r['max_abs_dr']:.1e} |")
    last = rows[-1]
    eng = last[f"engine-{a.backend}"][0]
    sk = last.get("sklearn", (float("nan"),))[0]
    hi = last.get("himalaya", (float("nan"),))[0]
    print(f"ridge: engine={eng:.3f} sklearn={sk:.3f} himalaya={hi:.3f} "
          f"speedup_sklearn={sk / eng:.1f} speedup_himalaya={hi / eng:.1f} "
          f"max_abs_dr={last['max_abs_dr']:.1e}")


if __name__ == "__main__":
    main()
