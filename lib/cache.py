"""Content hashing, cache keys and atomic writes.

A stage output is keyed by a hash of its inputs' content hashes and its parameters, stored in a
JSON sidecar ``<output>.json`` next to it. Same key -> reuse; different key or unreadable output ->
recompute. No timestamps in keys. Every file is written to a temporary name in the same folder
and renamed, so a crash never leaves a partial output under the final name.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np


#: files of this size and above have their hash remembered (:func:`file_hash`)
MEMO_MIN_BYTES = 16 << 20


def file_hash(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex, first 16 characters).

    A large file's hash is remembered under the cache folder (``file-hashes/``), keyed by its
    path and identity: size, inode, and modification and change times in nanoseconds, the way
    git's index and DVC remember theirs. A fine-tuned model's weights (540 MB, 1.3 s to hash)
    were hashed at every load, and the layer profile's activations (2 GB) once more in stage 05.
    Any write to a file, or a rename onto its path, gives it a new change time, which no program
    can set back: a remembered hash never outlives the bytes it was computed from."""
    p = Path(path)
    st = p.stat()
    if st.st_size < MEMO_MIN_BYTES:
        return _sha256(p, chunk)
    ident = [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]
    memo = _hash_memo(p)
    try:
        m = json.loads(memo.read_text())
        if m.get("ident") == ident:
            return m["sha256"]
    except (OSError, ValueError, AttributeError):
        pass
    h = _sha256(p, chunk)
    st = p.stat()
    if [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns] == ident:  # not written meanwhile
        with contextlib.suppress(OSError):   # a read-only cache only costs the hashing
            write_json(memo, {"path": str(p.resolve()), "ident": ident, "sha256": h})
    return h


def _hash_memo(p: Path) -> Path:
    from .paths import Paths

    name = hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:32]
    return Paths.from_env().cache / "file-hashes" / f"{name}.json"


def _sha256(path: Path, chunk: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()[:16]


def _default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"not JSON-serialisable for a cache key: {type(o).__name__}")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=_default, separators=(",", ":"))


def key_of(*parts: Any) -> str:
    """Stable hash of JSON-able parts (parameters, content hashes)."""
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()[:16]


def array_hash(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(str((a.dtype.str, a.shape)).encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename onto it only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_default) + "\n")


def write_csv(path: str | os.PathLike, df, **kw) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=kw.pop("index", False), **kw)
    return Path(path)


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return Path(path)


def save_nifti(img, path: str | os.PathLike) -> Path:
    """nibabel save through a temporary name (the suffix decides compression)."""
    import nibabel as nib

    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, str(tmp))
    return path


def sidecar(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_sidecar(path: str | os.PathLike) -> dict | None:
    try:
        return json.loads(sidecar(path).read_text())
    except (OSError, ValueError):
        return None


def is_fresh(path: str | os.PathLike, key: str) -> bool:
    """True when ``path`` exists, its sidecar carries ``key`` and the file's hash still matches."""
    path = Path(path)
    meta = read_sidecar(path)
    if not path.exists() or meta is None or meta.get("key") != key:
        return False
    if path.is_file() and meta.get("sha256") not in (None, file_hash(path)):
        return False  # corrupted or edited since it was written
    return True


def write_sidecar(path: str | os.PathLike, key: str, **info: Any) -> Path:
    path = Path(path)
    meta = {"key": key, **info}
    if path.is_file():
        meta["sha256"] = file_hash(path)
    return write_json(sidecar(path), meta)


def cached_npz(path: str | os.PathLike, key: str, compute: Callable[[], dict[str, np.ndarray]],
               **info: Any) -> tuple[dict[str, np.ndarray], bool]:
    """Load ``path`` if fresh for ``key``; else compute, write atomically with its sidecar.

    Returns (arrays, hit). A corrupt file (unreadable, or bytes that no longer match the sidecar)
    is recomputed.
    """
    path = Path(path)
    if is_fresh(path, key):
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}, True
        except (OSError, ValueError, EOFError):
            pass
    arrays = compute()
    write_npz(path, **arrays)
    write_sidecar(path, key, **info)
    return arrays, False
