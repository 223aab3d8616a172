import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vqcodec import bench
from vqcodec.cli import main
from vqcodec.cpu import has_int8_dot_product
from vqcodec.inference import native_bfloat16

from conftest import photo_crop


@pytest.fixture
def two_images(tmp_path, photo):
    folder = tmp_path / "imgs"
    folder.mkdir()
    arr = np.asarray(photo)
    Image.fromarray(photo_crop(photo, 48, 40)).save(folder / "a.png")
    Image.fromarray(np.ascontiguousarray(arr[100:140, 60:108])).save(folder / "b.png")
    return folder


@pytest.fixture
def restore_torch_threads():
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_bench_cli_end_to_end(two_images, tmp_path, restore_torch_threads):
    out_json, out_png = tmp_path / "r.json", tmp_path / "rd.png"
    # One torch thread: tiny images gain nothing from more, and it stays fast on a busy machine.
    result = CliRunner().invoke(main, ["bench", str(two_images), "--codecs", "vqz,jpeg,webp", "--threads", "1",
                                       "--json", str(out_json), "--plot", str(out_png), "--no-progress"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "BD-rate" in result.stdout and "JPEG" in result.stdout and "vqcodec" in result.stdout
    data = json.loads(out_json.read_text())
    assert data["num_images"] == 2
    assert set(data["codecs"]) == {"vqz", "jpeg", "webp"}
    assert len(data["codecs"]["vqz"]) == len(data["model"]["quality_levels"])
    assert [p["quality"] for p in data["codecs"]["jpeg"]] == list(bench.DEFAULT_QUALITIES["jpeg"])
    for points in data["codecs"].values():
        for p in points:
            for key in ("bpp", "psnr", "ms_ssim", "encode_s", "decode_s"):
                assert isinstance(p[key], float) and p[key] >= 0, (key, p)
            assert 0 < p["ms_ssim"] <= 1 and len(p["per_image"]) == 2
    assert set(data["bd_rate"]) == {"jpeg", "webp"}
    for entry in data["bd_rate"].values():
        assert entry["test"] == "vqz" and entry["max_bpp"] == 1.0 and "percent" in entry
    usage = data["usage"]
    assert [u["quality"] for u in usage] == data["model"]["quality_levels"]
    stages = [len(u["stages"]) for u in usage]  # a higher level keeps at least the stages of the one below
    assert stages[0] >= 1 and stages == sorted(stages) and stages[-1] > stages[0]
    for u in usage:
        for s in u["stages"]:
            assert 0 < s["fraction_used"] <= 1 and 0 <= s["entropy_bits"] <= np.log2(data["model"]["codebook_size"])
    for key in ("torch", "numpy", "pillow", "zstandard", "vqcodec", "python"):
        assert data["versions"][key]
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["torch_threads"] == 1
    # what the timings depend on: the networks' dtype and the priors' product kind on this CPU
    assert data["machine"]["bfloat16_networks"] == native_bfloat16()
    assert data["machine"]["int8_dot_product"] == has_int8_dot_product()
    assert out_png.read_bytes().startswith(b"\x89PNG") and out_png.stat().st_size > 1000


def test_bench_markdown_on_one_file(two_images):
    result = CliRunner().invoke(main, ["bench", str(two_images / "a.png"), "--codecs", "jpeg",
                                       "--markdown", "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "| codec | quality |" in result.stdout and result.stdout.count("| JPEG |") == 6


@pytest.mark.parametrize("args, words", [
    (["--codecs", "vqz,gif"], ["unknown codec", "gif"]),
    ([], ["no images found"]),
])
def test_bench_cli_errors(tmp_path, args, words):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(main, ["bench", str(empty), *args], catch_exceptions=False)
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and "Traceback" not in result.output
    for word in words:
        assert word in result.output


def test_bench_limit_takes_the_first_images(two_images, tmp_path):
    out_json = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["bench", str(two_images), "--codecs", "jpeg", "--limit", "1",
                                       "--json", str(out_json), "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(out_json.read_text())
    assert data["num_images"] == 1 and [Path(p).name for p in data["images"]] == ["a.png"]
    assert all(len(point["per_image"]) == 1 for point in data["codecs"]["jpeg"])


def test_bench_missing_path_fails_cleanly(tmp_path):
    result = CliRunner().invoke(main, ["bench", str(tmp_path / "nope")], catch_exceptions=False)
    assert result.exit_code == 1 and "no such file or folder" in result.output


def test_format_table_and_parse_codecs():
    assert bench.parse_codecs("VQZ, jpeg,jpeg") == ["vqz", "jpeg"]
    with pytest.raises(ValueError, match="unknown codec"):
        bench.parse_codecs("png")
    results = {"num_images": 1, "model": None, "codecs": {"jpeg": [
        {"quality": 5, "bpp": 0.3, "psnr": 25.0, "ms_ssim": 0.9, "encode_s": 0.01, "decode_s": 0.002}]},
        "bd_rate": {"jpeg": {"percent": -12.34}}}
    text = bench.format_table(results)
    assert "JPEG" in text and "0.3000" in text and "-12.3%" in text
    assert bench.format_table(results, markdown=True).count("|") > 10


def test_missing_avif_is_skipped_with_a_warning(two_images, monkeypatch):
    monkeypatch.setattr(bench, "avif_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="AVIF"):
        results = bench.run_bench([two_images / "a.png"], "jpeg,avif", progress=False,
                                  qualities={"jpeg": [20, 60]})
    assert list(results["codecs"]) == ["jpeg"] and results["skipped"][0]["codec"] == "avif"
    assert [p["quality"] for p in results["codecs"]["jpeg"]] == [20, 60]
    assert "skipped avif" in bench.format_table(results)
