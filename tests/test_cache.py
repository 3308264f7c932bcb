"""lib.cache: content hashes, and the memory of large files' hashes."""
import os

import pytest

from lib import cache


@pytest.fixture
def small_memo(monkeypatch, tmp_path):
    """Every file counts as large, and the remembered hashes live under tmp_path."""
    monkeypatch.setattr(cache, "MEMO_MIN_BYTES", 0)
    monkeypatch.setenv("NARRATIVES_CACHE", str(tmp_path / "cache"))
    calls = []
    real = cache._sha256
    monkeypatch.setattr(cache, "_sha256", lambda p, chunk: calls.append(p) or real(p, chunk))
    return calls


def test_a_large_files_hash_is_remembered_until_it_is_written(small_memo, tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"a" * 1000)
    h = cache.file_hash(f)
    assert cache.file_hash(f) == h and len(small_memo) == 1        # the second one remembered
    st = f.stat()
    f.write_bytes(b"b" * 1000)                                     # same size ...
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))               # ... and modification time
    h2 = cache.file_hash(f)
    assert h2 != h and len(small_memo) == 2                        # the change time told
    assert h2 == cache._sha256(f, 1 << 20)


def test_a_file_renamed_onto_the_path_is_hashed_afresh(small_memo, tmp_path):
    f, g = tmp_path / "a.npz", tmp_path / "b.part"
    f.write_bytes(b"x" * 10)
    h = cache.file_hash(f)
    g.write_bytes(b"y" * 10)
    g.replace(f)                                                   # an atomic rewrite
    assert cache.file_hash(f) != h and len(small_memo) == 2


def test_an_unwritable_cache_only_costs_the_hashing(monkeypatch, tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"z" * 100)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")                         # the cache path is a file: nothing can be kept
    monkeypatch.setenv("NARRATIVES_CACHE", str(blocker))
    monkeypatch.setattr(cache, "MEMO_MIN_BYTES", 0)
    assert cache.file_hash(f) == cache.file_hash(f) == cache._sha256(f, 1 << 20)
