"""Where the CUDA ridge time goes (eigh precision / library) and where torch-CUDA and numpy differ."""
import sys, time, json
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np, torch
from lib import encoding as enc

out = {}
def t_eigh(n, dt, lib):
    torch.backends.cuda.preferred_linalg_library(lib)
    A = torch.randn(n, 3072, device="cuda")
    K = (A @ A.T).to(dt)
    torch.linalg.eigh(K); torch.cuda.synchronize()
    t0 = time.perf_counter(); torch.linalg.eigh(K); torch.cuda.synchronize()
    return time.perf_counter() - t0
for lib in ("cusolver", "magma"):
    for dt in (torch.float64, torch.float32):
        try:
            out[f"eigh2400_{lib}_{dt}"] = t_eigh(2400, dt, lib)
        except Exception as e:
            out[f"eigh2400_{lib}_{dt}"] = str(e)[:200]
print(out, flush=True)
torch.backends.cuda.preferred_linalg_library("default")
rng = np.random.default_rng(0)
n, p, t = 1000, 3072, 5000
X = rng.standard_normal((n, p), dtype=np.float32)
W = rng.standard_normal((p, 64), dtype=np.float32) @ rng.standard_normal((64, t), dtype=np.float32) / np.sqrt(p * 64)
Y = X @ W * 3 + rng.standard_normal((n, t), dtype=np.float32)
a = enc.fit_score(X, Y, backend="numpy")
b = enc.fit_score(X, Y, backend="torch", device="cuda")
same = (a.alphas == b.alphas).all(0)
d = np.abs(a.scores - b.scores)
out["dr_same_alpha_max"] = float(d[same].max()); out["dr_diff_alpha_max"] = float(d[~same].max()) if (~same).any() else 0
out["n_targets_alpha_differs"] = int((~same).sum())
c = enc.fit_score(X, Y, backend="torch", device="cuda", alphas=[1000.0])
e = enc.fit_score(X, Y, backend="numpy", alphas=[1000.0])
out["dr_fixed_alpha_max"] = float(np.abs(c.scores - e.scores).max())
print(out, flush=True)
# full big run with timing breakdown via the profiler-free route: time per fold pieces
n, t = 3000, 50000
X = rng.standard_normal((n, p), dtype=np.float32)
Y = rng.standard_normal((n, t), dtype=np.float32)
for lib in ("default", "magma"):
    torch.backends.cuda.preferred_linalg_library(lib)
    torch.cuda.synchronize(); t0 = time.perf_counter()
    enc.fit_score(X, Y, backend="torch", device="cuda", batch_targets=50000)
    torch.cuda.synchronize(); out[f"ridge3000x50000_{lib}"] = time.perf_counter() - t0
    print(out, flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
