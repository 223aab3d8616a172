import os

import pytest

from vqcodec.fileio import atomic_write_bytes


def test_writes_and_replaces(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_no_overwrite_keeps_existing_file(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        atomic_write_bytes(path, b"new", overwrite=False)
    assert path.read_bytes() == b"keep"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_failed_write_leaves_nothing(tmp_path):

    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "a.bin", object())  # not bytes: the write itself fails
    assert os.listdir(tmp_path) == []


def test_missing_folder_raises_os_error(tmp_path):
    with pytest.raises(OSError):
        atomic_write_bytes(tmp_path / "missing" / "a.bin", b"x")


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
