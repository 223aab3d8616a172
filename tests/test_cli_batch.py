"""Pipes, --json, batches (folders, several files, --jobs), --version and completion help."""
import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from vqcodec import __version__, container
from vqcodec.cli import main

from conftest import photo_crop


@pytest.fixture
def png(tmp_path, photo):
    path = tmp_path / "pic.png"
    Image.fromarray(photo_crop(photo, 32, 24)).save(path)
    return path


@pytest.fixture
def tree(tmp_path, photo):
    """Three small images (one in a subfolder) and a broken one."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(photo_crop(photo, 16, 16)).save(root / "a.png")
    Image.fromarray(photo_crop(photo, 24, 16)).convert("L").save(root / "b.jpg")
    Image.fromarray(photo_crop(photo, 16, 32)).convert("RGBA").save(root / "sub" / "c.png")
    return root


def run(runner, *args, input=None):
    return runner.invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def files_under(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# ------------------------------------------------------------------ pipes

def test_encode_and_decode_through_pipes(runner, png):
    encoded = run(runner, "encode", "-", "-o", "-", "-q", 2, input=png.read_bytes())
    assert encoded.exit_code == 0, encoded.output
    assert encoded.stdout_bytes.startswith(container.MAGIC) and encoded.stderr == ""
    # INPUT '-' writes to standard output by default
    assert run(runner, "encode", "-", "-q", 2, input=png.read_bytes()).stdout_bytes == encoded.stdout_bytes
    decoded = run(runner, "decode", "-", "-o", "-", input=encoded.stdout_bytes)
    assert decoded.exit_code == 0, decoded.output
    with Image.open(io.BytesIO(decoded.stdout_bytes)) as im:
        assert im.format == "PNG" and im.size == (32, 24)
    as_jpeg = run(runner, "decode", "-", "--format", "jpg", input=encoded.stdout_bytes)
    with Image.open(io.BytesIO(as_jpeg.stdout_bytes)) as im:
        assert im.format == "JPEG"


def test_pipe_into_and_out_of_files(runner, png, tmp_path):
    assert run(runner, "encode", png, "-o", "-").stdout_bytes.startswith(container.MAGIC)
    assert run(runner, "encode", "-", "-o", tmp_path / "s.vqz", input=png.read_bytes()).exit_code == 0
    result = run(runner, "decode", "-", "-o", tmp_path / "s.webp", input=(tmp_path / "s.vqz").read_bytes())
    assert result.exit_code == 0 and result.output == ""
    with Image.open(tmp_path / "s.webp") as im:
        assert im.format == "WEBP"


def test_bad_stdin_is_a_clean_failure(runner):
    result = run(runner, "decode", "-", "-o", "-", input=b"junk")
    assert result.exit_code == 1 and result.stdout_bytes == b""
    assert result.stderr.startswith("error: ") and "bad magic" in result.stderr


@pytest.mark.parametrize("args", [
    ["encode", "-", "a.png"],                # '-' must be alone
    ["encode", "a.png", "b.png", "-o", "-"],  # several inputs to stdout
    ["encode", "-", "-o", "dir/"],           # stdin into a folder: no name to give
    ["decode", "x.vqz", "--format", "nope"],
    ["decode", "x.vqz", "--format", "vqz"],
    ["encode", "x.png", "--coder", "no-such-coder"],
])
def test_pipe_and_option_misuse_is_a_usage_error(runner, tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.png").write_bytes(b"")
    assert runner.invoke(main, args).exit_code == 2


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_binary_output_to_a_terminal_is_refused(png):
    leader, follower = os.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "vqcodec", "encode", str(png), "-o", "-"],
                              stdout=follower, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(follower)
        os.close(leader)
    assert done.returncode == 2 and b"terminal" in done.stderr


# ------------------------------------------------------------------ --json and quiet

def test_json_records_and_quiet_default(runner, png, tmp_path):
    quiet = run(runner, "encode", png, "-o", tmp_path / "q.vqz")
    assert quiet.exit_code == 0 and quiet.output == ""
    result = run(runner, "encode", png, "-o", tmp_path / "a.vqz", "-q", 3, "--json")
    (record,) = json_lines(result.stdout)
    assert record["ok"] is True and record["input"] == str(png) and record["output"] == str(tmp_path / "a.vqz")
    assert (record["width"], record["height"], record["quality"]) == (32, 24, 3)
    assert record["bytes"] == (tmp_path / "a.vqz").stat().st_size and record["bpp"] > 0
    result = run(runner, "decode", tmp_path / "a.vqz", "-o", tmp_path / "a.png", "--json", "-v")
    (record,) = json_lines(result.stdout)
    assert record["format"] == "PNG" and record["output"] == str(tmp_path / "a.png")
    assert "32x24" in result.stderr  # -v goes to stderr when stdout carries JSON
    lines = json_lines(run(runner, "info", tmp_path / "a.vqz", tmp_path / "q.vqz", "--json").stdout)
    assert [r["input"] for r in lines] == [str(tmp_path / "a.vqz"), str(tmp_path / "q.vqz")]
    assert lines[0]["quality"] == 3 and "model_sha256" in lines[0]


def test_json_goes_to_stderr_when_data_goes_to_stdout(runner, png):
    result = run(runner, "encode", png, "-o", "-", "--json")
    assert result.stdout_bytes.startswith(container.MAGIC)
    (record,) = json_lines(result.stderr)
    assert record["output"] == "-" and record["bytes"] == len(result.stdout_bytes)


# ------------------------------------------------------------------ batches

def test_batch_keeps_going_after_a_bad_file(runner, tree, tmp_path):
    (tree / "bad.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    result = run(runner, "encode", tree, tmp_path / "missing.png", "-o", out, "-q", 1, "--json")
    assert result.exit_code == 1
    assert f"error: {tree / 'bad.png'}: cannot read image" in result.stderr
    assert f"error: {tmp_path / 'missing.png'}: no such file" in result.stderr
    assert "2 of 5 files failed" in result.stderr and "Traceback" not in result.output
    assert files_under(out) == ["a.vqz", "b.vqz", "sub/c.vqz"]  # layout kept, nothing partial
    records = json_lines(result.stdout)
    assert sorted(r["ok"] for r in records) == [False, False, True, True, True]

    decoded = tmp_path / "decoded"
    result = run(runner, "decode", out, "-o", decoded, "--format", "webp")
    assert result.exit_code == 0 and result.output == ""
    assert files_under(decoded) == ["a.webp", "b.webp", "sub/c.webp"]
    with Image.open(decoded / "sub" / "c.webp") as im:
        assert im.format == "WEBP" and im.size == (16, 32)


def test_batch_next_to_inputs_needs_force_to_overwrite(runner, tree):
    files = [tree / "a.png", tree / "b.jpg"]
    (tree / "a.vqz").write_bytes(b"keep me")
    result = run(runner, "encode", *files, "-q", 1)
    assert result.exit_code == 1 and "already exists" in result.stderr
    assert (tree / "a.vqz").read_bytes() == b"keep me" and (tree / "b.vqz").exists()
    assert run(runner, "encode", *files, "-q", 1, "--force").exit_code == 0
    assert (tree / "a.vqz").read_bytes().startswith(container.MAGIC)


def test_two_inputs_with_one_output_name(runner, tree, photo):
    Image.fromarray(photo_crop(photo, 16, 16)).save(tree / "a.bmp")  # a.png and a.bmp -> a.vqz
    result = run(runner, "encode", tree / "a.png", tree / "a.bmp", "-q", 1)
    assert result.exit_code == 1 and "would also be the output of" in result.stderr
    assert (tree / "a.vqz").exists()


def test_a_file_named_twice_is_done_once(runner, tree):
    result = run(runner, "encode", tree, tree / "a.png", "-q", 1, "--json")
    assert result.exit_code == 0, result.output
    assert len(json_lines(result.stdout)) == 3


def test_single_file_into_a_folder(runner, png, tmp_path):
    assert run(runner, "encode", png, "-o", f"{tmp_path / 'new'}{os.sep}", "-q", 1).exit_code == 0
    assert (tmp_path / "new" / "pic.vqz").exists()
    assert run(runner, "decode", tmp_path / "new" / "pic.vqz", "-o", tmp_path, "--format", "jpeg").exit_code == 0
    assert (tmp_path / "pic.jpg").exists()


def test_batch_output_must_be_a_folder(runner, tree, png):
    assert run(runner, "encode", tree, "-o", png).exit_code == 2


def test_folder_without_matching_files(runner, tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    result = run(runner, "encode", tmp_path)
    assert result.exit_code == 1 and "is a directory with no images" in result.stderr
    assert run(runner, "info", tmp_path).exit_code == 1


@pytest.mark.slow
def test_jobs_run_in_worker_processes(runner, tree, tmp_path):
    out = tmp_path / "out"
    result = run(runner, "encode", tree, "-o", out, "-q", 2, "--jobs", 2, "--json")
    assert result.exit_code == 0, result.output
    assert sorted(r["input"] for r in json_lines(result.stdout)) == sorted(
        str(p) for p in [tree / "a.png", tree / "b.jpg", tree / "sub" / "c.png"])
    back = tmp_path / "back"
    result = run(runner, "decode", out / "a.vqz", out / "b.vqz", out / "sub", "-o", back, "-j", 2)
    assert result.exit_code == 0, result.output
    assert files_under(back) == ["a.png", "b.png", "c.png"]
    with Image.open(back / "b.png") as im:
        assert im.size == (24, 16) and im.mode == "L"


def test_info_on_several_files_and_a_folder(runner, tree, tmp_path):
    run(runner, "encode", tree, "-o", tmp_path / "out", "-q", 1)
    text = run(runner, "info", tmp_path / "out").stdout
    assert text.count("model_sha256") == 3 and text.count("\ninput ") == 2 and text.startswith("input ")


# ------------------------------------------------------------------ --version, completion

def test_version_and_completion_help(runner):
    result = run(runner, "--version")
    assert result.exit_code == 0 and "vqcodec" in result.output and __version__ in result.output
    assert "_VQCODEC_COMPLETE=bash_source vqcodec" in run(runner, "--help").output


@pytest.mark.slow
def test_help_does_not_import_torch():
    code = ("import sys\nfrom vqcodec.cli import main\n"
            "for args in (['--help'], ['encode', '--help'], ['decode', '--help']):\n"
            "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
            "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, capture_output=True)


@pytest.mark.slow
def test_bash_completion_script(tmp_path):
    env = {**os.environ, "_VQCODEC_COMPLETE": "bash_source"}
    done = subprocess.run([sys.executable, "-m", "vqcodec"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "complete " in done.stdout and "_VQCODEC_COMPLETE" in done.stdout
