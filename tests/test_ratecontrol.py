import pytest

from vqcodec import ratecontrol
from vqcodec.metrics import psnr

LEVELS = list(range(1, 9))
BPP = {1: 0.05, 2: 0.1, 3: 0.16, 4: 0.25, 5: 0.4, 6: 0.6, 7: 0.9, 8: 1.3}
PSNR = {1: 24.0, 2: 25.5, 3: 27.0, 4: 28.2, 5: 29.9, 6: 31.5, 7: 33.0, 8: 34.2}


@pytest.mark.parametrize("target, level", [(0.05, 1), (0.3, 4), (0.4, 5), (0.59, 5), (5.0, 8)])
def test_target_bpp_takes_the_highest_level_within_the_budget(target, level):
    probed = []
    choice = ratecontrol.for_target_bpp(LEVELS, lambda q: probed.append(q) or BPP[q], target)
    assert (choice.level, choice.met, choice.value) == (level, True, BPP[level])
    assert len(set(probed)) == len(probed) == choice.probes <= 4  # binary search, no repeated encode


@pytest.mark.parametrize("target, level", [(20.0, 1), (28.2, 4), (30.0, 6), (34.2, 8)])
def test_target_psnr_takes_the_lowest_level_that_reaches_it(target, level):
    choice = ratecontrol.for_target_psnr(LEVELS, PSNR.__getitem__, target)
    assert (choice.level, choice.met) == (level, True)
    assert choice.value >= target


def test_unreachable_targets_return_the_nearest_level_and_say_so():
    low = ratecontrol.for_target_bpp(LEVELS, BPP.__getitem__, 0.01)
    assert (low.level, low.met) == (1, False)
    high = ratecontrol.for_target_psnr(LEVELS, PSNR.__getitem__, 40.0)
    assert (high.level, high.met) == (8, False)


def test_encode_meets_a_bpp_or_psnr_target_and_says_when_it_cannot(runner, tmp_path, default_model, photo):
    import numpy as np

    from vqcodec import codec, images
    from vqcodec.cli import main

    source = tmp_path / "in.png"
    photo.save(source)
    sizes = {q: len(codec.encode(photo, quality=q)) * 8 / (256 * 256) for q in (3, 4)}
    budget = (sizes[3] + sizes[4]) / 2  # between levels 3 and 4
    result = runner.invoke(main, ["encode", str(source), "-o", str(tmp_path / "a.vqz"), "--target-bpp", f"{budget}"])
    assert result.exit_code == 0, result.output
    assert codec.describe((tmp_path / "a.vqz").read_bytes())["quality"] == 3
    target = 27.0
    result = runner.invoke(main, ["encode", str(source), "-o", str(tmp_path / "b.vqz"), "--target-psnr", "27"])
    assert result.exit_code == 0, result.output
    data = (tmp_path / "b.vqz").read_bytes()
    quality = codec.describe(data)["quality"]
    decoded = images.split_alpha(codec.decode(data))[0]
    assert psnr(images.split_alpha(photo)[0], decoded) >= target
    lower = images.split_alpha(codec.decode(codec.encode(photo, quality=quality - 1)))[0]
    assert psnr(images.split_alpha(photo)[0], lower) < target  # the lowest level that reaches it
    result = runner.invoke(main, ["encode", str(source), "-o", str(tmp_path / "c.vqz"), "--target-bpp", "0.0001"])
    assert result.exit_code == 0 and "no quality level reaches" in result.output
    result = runner.invoke(main, ["encode", str(source), "-o", str(tmp_path / "d.vqz"), "-q", "2", "--target-bpp", "1"])
    assert result.exit_code == 2 and not (tmp_path / "d.vqz").exists()
