import pytest

from vqcodec import ratecontrol

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
