"""Quality levels -> stages per layer (vqcodec/quality.py), the one place of that arithmetic."""
import pytest

from vqcodec import quality


def test_a_base_model_alone_keeps_q_stages():
    levels = quality.levels(3)
    assert (levels.count, levels.base) == (3, 3)
    assert [levels.stages(q) for q in (1, 2, 3)] == [(1,), (2,), (3,)]


@pytest.mark.parametrize("base_stages, base", [(0, 8), (4, 4)])
def test_enhancement_levels_add_stages_over_the_base_level(base_stages, base):
    levels = quality.levels(8, enhance_stages=3, base_stages=base_stages)
    assert (levels.count, levels.base) == (base + 3, base)
    assert levels.stages(base - 1) == (base - 1,)
    assert levels.stages(base) == (base,)
    assert levels.stages(base + 2) == (base, 2)


def test_levels_outside_the_model_are_refused():
    with pytest.raises(ValueError, match="base_stages must be from 1 to the base model's 8 stages"):
        quality.levels(8, enhance_stages=2, base_stages=9)
    for level in (0, 5):
        with pytest.raises(ValueError, match="not one of the levels 1..4"):
            quality.levels(2, enhance_stages=2).stages(level)


def test_the_default_is_half_the_base_stages_rounded_up():
    assert [quality.default_quality(n) for n in (1, 2, 7, 8)] == [1, 1, 4, 4]
