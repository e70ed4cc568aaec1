"""casting.files: atomic writes leave the old file or the new one, never a part."""

import hashlib
import os
import resource

import numpy as np
import pytest

from casting.files import atomic_path, reserve_space, reserve_space_for, sha256_file, write_atomic


def test_write_atomic_text_and_bytes(tmp_path):
    path = tmp_path / "sub" / "a.json"  # the folder is created
    write_atomic(path, '{"x": "é"}')
    assert path.read_text(encoding="utf-8") == '{"x": "é"}'
    write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert os.listdir(path.parent) == ["a.json"]  # no temporary file left


def test_atomic_path_error_keeps_the_old_file(tmp_path):
    path = tmp_path / "w.weights.h5"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(path, suffix=".weights.h5") as tmp:
            assert tmp.endswith(".weights.h5") and os.path.dirname(tmp) == str(tmp_path)
            with open(tmp, "wb") as fh:
                fh.write(b"half of a new fi")
            raise RuntimeError("writer failed")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["w.weights.h5"]
    with atomic_path(path, suffix=".weights.h5") as tmp:
        with open(tmp, "wb") as fh:
            fh.write(b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["w.weights.h5"]


def test_reserve_space_fails_cleanly_over_a_file_size_limit(tmp_path):
    """A file-size limit stands in for a full disk (root cannot bypass RLIMIT_FSIZE)."""
    reserve_space_for(str(tmp_path), [np.zeros((4, 4), np.float32)])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        with pytest.raises(OSError):
            reserve_space(str(tmp_path), 8 << 20)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert os.listdir(tmp_path) == []  # the probe file is removed


def test_sha256_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc" * 1000)
    assert sha256_file(str(path)) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_replace_dir_swaps_a_whole_folder_in(tmp_path):
    from casting.files import replace_dir

    final = tmp_path / "saved_model"
    for content in ("first", "second"):
        staging = tmp_path / f".tmp-staging-{content}"
        staging.mkdir()
        (staging / "file.txt").write_text(content)
        replace_dir(staging, final)
        assert (final / "file.txt").read_text() == content
        assert not staging.exists()
    # the folder it replaced is gone, and nothing else is left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved_model"]
    assert sorted(p.name for p in final.iterdir()) == ["file.txt"]
