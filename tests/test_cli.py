import json

import pytest
from PIL import Image

from vqcodec import __version__
from vqcodec.cli import main

from conftest import photo_crop


@pytest.fixture
def png(tmp_path, photo):
    path = tmp_path / "pic.png"
    Image.fromarray(photo_crop(photo, 40, 24)).save(path)
    return path


def run(runner, *args):
    return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_clean_failure(result, *words):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("error: ")
    for word in words:
        assert word in result.output


def test_encode_decode_with_default_names(runner, png):
    assert run(runner, "encode", png).exit_code == 0
    vqz = png.with_suffix(".vqz")
    assert vqz.exists()
    png.unlink()
    assert run(runner, "decode", vqz).exit_code == 0
    with Image.open(png) as out:
        assert out.size == (40, 24) and out.format == "PNG"


def test_decode_format_follows_suffix(runner, png, tmp_path):
    run(runner, "encode", png, "-o", tmp_path / "a.vqz", "-q", 2)
    assert run(runner, "decode", tmp_path / "a.vqz", "-o", tmp_path / "a.webp").exit_code == 0
    with Image.open(tmp_path / "a.webp") as out:
        assert out.format == "WEBP" and out.size == (40, 24)


def test_existing_output_needs_force(runner, png, tmp_path):
    out = tmp_path / "x.vqz"
    out.write_bytes(b"keep me")
    assert_clean_failure(run(runner, "encode", png, "-o", out), "already exists", "--force")
    assert out.read_bytes() == b"keep me"
    assert run(runner, "encode", png, "-o", out, "--force").exit_code == 0
    assert out.read_bytes().startswith(b"\x89VQZ")


def test_input_is_never_modified_and_output_cannot_be_input(runner, png):
    before = png.read_bytes()
    assert_clean_failure(run(runner, "encode", png, "-o", png, "--force"), "is the input")
    assert png.read_bytes() == before


@pytest.mark.parametrize("content,words", [
    (b"not an image at all", ["cannot read image"]),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ["cannot read image"]),
])
def test_bad_image_input_fails_cleanly(runner, tmp_path, content, words):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    assert_clean_failure(run(runner, "encode", bad), *words)
    assert not bad.with_suffix(".vqz").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.png"]  # no partial or temp files


def test_missing_file_and_directory(runner, tmp_path):
    assert_clean_failure(run(runner, "encode", tmp_path / "nope.png"), "no such file")
    assert_clean_failure(run(runner, "decode", tmp_path), "is a directory")


def test_corrupt_vqz_fails_cleanly_and_writes_nothing(runner, png, tmp_path):
    vqz = tmp_path / "a.vqz"
    run(runner, "encode", png, "-o", vqz)
    data = bytearray(vqz.read_bytes())
    data[-10] ^= 0xFF
    vqz.write_bytes(bytes(data))
    out = tmp_path / "a_out.png"
    assert_clean_failure(run(runner, "decode", vqz, "-o", out), "CRC-16")
    assert not out.exists()
    vqz.write_bytes(b"hello")
    assert_clean_failure(run(runner, "info", vqz), "bad magic")


def test_bad_quality_is_a_clean_error(runner, png):
    assert_clean_failure(run(runner, "encode", png, "-q", 99), "quality must be")


def test_info_json_lists_every_header_field(runner, png, tmp_path):
    vqz = tmp_path / "a.vqz"
    run(runner, "encode", png, "-o", vqz, "-q", 3)
    fields = json.loads(run(runner, "info", vqz, "--json").output)
    for key in ("model_name", "model_sha256", "width", "height", "mode", "quality", "coder",
                "grid_shapes", "index_crc32", "format_version", "file_bytes", "bpp"):
        assert key in fields
    assert fields["quality"] == 3 and fields["width"] == 40 and fields["coder"] == "prior"
    text = run(runner, "info", vqz).output
    assert "model_sha256" in text and "bpp" in text


def test_models_json_fields(runner):
    listed = json.loads(run(runner, "models", "--json").output)
    assert listed and sum(m["default"] for m in listed) == 1
    for m in listed:
        assert isinstance(m["name"], str) and len(m["sha256"]) == 64
        assert m["quality_levels"] == sorted(m["quality_levels"]) and all(isinstance(q, int) for q in m["quality_levels"])
        assert isinstance(m["description"], str) and m["description"]


def test_help_explains_every_option(runner):
    for command in ["encode", "decode", "info", "models", "demo", "train"]:
        result = run(runner, command, "--help")
        assert result.exit_code == 0
        for param in main.commands[command].params:
            if param.param_type_name == "option":
                assert param.help, f"{command} {param.opts} has no help text"
                assert param.opts[-1] in result.output
    assert run(runner, "--help").exit_code == 0


def test_version(runner):
    assert __version__ in run(runner, "--version").output


def test_usage_error_exits_2(runner):
    result = runner.invoke(main, ["encode", "--no-such-option", "x"])
    assert result.exit_code == 2


def test_demo_prints_bpp_and_psnr(runner):
    result = run(runner, "demo", "-q", 1)
    assert result.exit_code == 0
    assert "bpp" in result.output and "PSNR" in result.output


@pytest.mark.slow
def test_python_dash_m(tmp_path, png):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "vqcodec", "encode", str(png), "-o", str(tmp_path / "m.vqz"), "-q", "1"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "m.vqz").read_bytes().startswith(b"\x89VQZ")
    bad = subprocess.run([sys.executable, "-m", "vqcodec", "decode", str(tmp_path / "none.vqz")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "no such file" in bad.stderr


def test_unwritable_output_is_a_clean_error(runner, png, tmp_path):
    assert_clean_failure(run(runner, "encode", png, "-o", tmp_path / "no" / "such" / "dir.vqz"),
                         "cannot write", "dir.vqz")


def test_full_disk_is_a_clean_error_and_leaves_no_file(runner, png, tmp_path, monkeypatch):
    import errno
    import os

    real_fsync = os.fsync

    def full(fd):  # the disk fills up while the output is written
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    assert_clean_failure(run(runner, "encode", png, "-o", tmp_path / "full.vqz"), "No space left on device")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pic.png"]  # no output, no temp file


@pytest.mark.slow
def test_full_disk_on_standard_output_is_a_clean_error(png):
    import subprocess
    import sys
    from pathlib import Path
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    with open("/dev/full", "wb") as full:
        out = subprocess.run([sys.executable, "-m", "vqcodec", "encode", str(png), "-o", "-", "-q", "1"],
                             stdout=full, stderr=subprocess.PIPE, text=True)
    assert out.returncode == 1 and "Traceback" not in out.stderr and "No space left" in out.stderr


@pytest.mark.slow
def test_closed_pipe_is_quiet():
    """`vqcodec models | head -1`: when the reader goes away, no error message and no traceback."""
    import subprocess
    import sys
    child = subprocess.Popen([sys.executable, "-m", "vqcodec", "models"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    child.stdout.close()  # before the child writes anything
    stderr = child.stderr.read().decode()
    child.wait(timeout=60)
    assert "Traceback" not in stderr and "error" not in stderr, stderr
