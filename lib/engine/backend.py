"""Array backends for the ridge engine: numpy, or torch on a CPU or CUDA device, behind the
handful of operations the engine needs, and the column-wise scores (Pearson r, R^2) on them."""
from __future__ import annotations

import numpy as np

from .folds import EngineError


def _eigh64(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    try:
        import torch
    except ImportError:      # the engine without torch: numpy's LAPACK
        return np.linalg.eigh(G)
    lam, U = torch.linalg.eigh(torch.from_numpy(G))
    return lam.numpy(), U.numpy()


class Backend:
    """The handful of array operations the engine needs, for numpy or torch."""

    def __init__(self, name: str = "numpy", device: str | None = None, dtype: str = "float32"):
        self.name = name
        if name == "numpy":
            self.xp, self.dtype, self.device = np, np.dtype(dtype), "cpu"
        elif name == "torch":
            import torch

            self.xp = torch
            self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            self.dtype = getattr(torch, dtype)
        else:
            raise EngineError(f"backend must be 'numpy' or 'torch', got {name!r}")

    def asarray(self, a, dtype=None):
        if self.name == "numpy":
            return np.asarray(a, dtype=dtype or self.dtype)
        import torch

        return torch.as_tensor(np.asarray(a), device=self.device).to(dtype or self.dtype)

    def idx(self, i):
        if self.name == "numpy":
            return np.asarray(i)
        import torch

        return torch.as_tensor(np.asarray(i), device=self.device)

    def to_numpy(self, a) -> np.ndarray:
        if self.name == "numpy":
            return np.asarray(a)
        a = a.detach()
        return (a.float() if a.is_floating_point() else a).cpu().numpy()

    def zeros(self, shape):
        if self.name == "numpy":
            return np.zeros(shape, self.dtype)
        return self.xp.zeros(shape, dtype=self.dtype, device=self.device)

    def eigh(self, G):
        """Eigendecomposition in float64 (Gram matrices square the condition number).

        The numpy backend hands it to torch's LAPACK where torch is installed: the same
        divide-and-conquer ``syevd`` of the same float64 matrix, in MKL instead of numpy's
        OpenBLAS, measured 0.87 s against 1.22 s for a 2304-column Gram on 2 cores
        (``bench/bench_ridge.py``, docs/benchmarks.md); the ridge's eigendecompositions are
        most of stage 05 on response matrices."""
        if self.name == "numpy":
            lam, U = _eigh64(np.asarray(G, np.float64))
            return lam.astype(self.dtype), U.astype(self.dtype)
        import torch

        lam, U = torch.linalg.eigh(G.to(torch.float64))
        return lam.to(self.dtype), U.to(self.dtype)

    def mean0(self, a, keep=False):
        return a.mean(0, keepdims=keep) if self.name == "numpy" else a.mean(0, keepdim=keep)


def pearson_cols(B: Backend, p, y, eps: float = 1e-12):
    """Column-wise Pearson r of p and y, shape (..., n, t) -> (..., t)."""
    kd = {"keepdims": True} if B.name == "numpy" else {"keepdim": True}
    p = p - p.mean(-2, **kd)
    y = y - y.mean(-2, **kd)
    return (p * y).sum(-2) / (((p * p).sum(-2) * (y * y).sum(-2)) ** 0.5 + eps)


def np_pearson(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Column-wise Pearson r.

    Parameters
    ----------
    p, y : array (n, t)
        Predictions and responses.

    Returns
    -------
    array (t,)
        r of each column pair.
    """
    return pearson_cols(Backend("numpy", dtype="float64"), np.asarray(p, float),
                        np.asarray(y, float))


def zscore_on(B: Backend, a, rows, eps: float = 1e-8):
    """Standardise the columns of ``a`` with the mean and sd of ``rows`` only."""
    mu, sd = _moments(B, a[B.idx(rows)], eps)
    return (a - mu) / sd


def zscore_rows(B: Backend, a, rows, other, eps: float = 1e-8):
    """``zscore_on(a, rows)[rows]`` and ``[other]`` (the same numbers), standardising only those
    rows: a fold's fit and prediction rows, not the whole design each time."""
    fit = a[B.idx(rows)]
    mu, sd = _moments(B, fit, eps)
    return (fit - mu) / sd, (a[B.idx(other)] - mu) / sd


def _moments(B: Backend, sub, eps: float):
    """Column mean and sd of ``sub`` (sd 1 where a column is constant)."""
    mu = B.mean0(sub)
    sd = B.mean0((sub - mu) ** 2) ** 0.5
    return mu, B.xp.where(sd > eps, sd, B.xp.ones_like(sd))


def r2_cols(B: Backend, p, y, eps: float = 1e-12):
    """Column-wise R^2 of block-centred predictions vs block-centred y, (..., n, t) -> (..., t)
    (offsets ignored, like r; unlike r, the prediction's scale counts)."""
    kd = {"keepdims": True} if B.name == "numpy" else {"keepdim": True}
    p = p - p.mean(-2, **kd)
    y = y - y.mean(-2, **kd)
    return 1 - ((y - p) ** 2).sum(-2) / ((y * y).sum(-2) + eps)
