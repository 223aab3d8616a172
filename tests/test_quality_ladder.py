"""benchmarks/quality_ladder.py's choice of a hierarchical model's quality levels from measured
(bpp, PSNR) points: the shipped ladder (configs/photo_v2.json) comes from it."""
import importlib
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def ladder_script():
    folder = str(Path(__file__).resolve().parent.parent / "benchmarks")
    sys.path.insert(0, folder)
    try:
        yield importlib.import_module("quality_ladder")
    finally:
        sys.path.remove(folder)


# one prefix, concave in log-bpp: x0.5 -> x4 passes 0.3 dB under x1 (at 0.05 bpp: 23.6 on the
# chord); prefix 2 starts below prefix 1's top and goes on from there
POINTS = {(1, 0.5): (0.040, 23.0), (1, 1.0): (0.050, 23.9), (1, 4.0): (0.060, 24.1),
          (2, 0.5): (0.058, 23.8), (2, 4.0): (0.085, 25.0)}


def test_ratio_alone_takes_the_highest_rate_within_the_ratio(ladder_script):
    assert ladder_script.choose_ladder(POINTS, 1.5) == [(1, 0.5), (1, 4.0), (2, 4.0)]


def test_chord_gap_keeps_the_point_a_straight_line_would_miss(ladder_script):
    assert ladder_script.chord_gap(POINTS, [(1, 0.5), (1, 1.0), (1, 4.0)], (1, 0.5), (1, 4.0)) == pytest.approx(
        23.9 - (23.0 + 1.1 * 0.22314355 / 0.40546511), abs=1e-6)
    assert ladder_script.choose_ladder(POINTS, 1.5, 0.1) == [(1, 0.5), (1, 1.0), (1, 4.0), (2, 4.0)]
    assert ladder_script.choose_ladder(POINTS, 1.5, 0.5) == [(1, 0.5), (1, 4.0), (2, 4.0)]


def test_levels_never_drop_stages_and_leave_out_dominated_points(ladder_script):
    ladder = ladder_script.choose_ladder(POINTS, 1.2, 0.0)
    assert (2, 0.5) not in ladder  # more bits and less PSNR than (1, 1.0): off the Pareto front
    assert [n for n, _ in ladder] == sorted(n for n, _ in ladder)


def test_measure_codes_each_point_as_the_codec_would_with_that_ladder(ladder_script, tmp_path, monkeypatch):
    from test_hierarchy_codec import install_tiny, pixels
    from vqcodec import codec

    monkeypatch.setenv("VQCODEC_WEIGHTS", str(tmp_path))
    install_tiny(tmp_path, "measured")  # levels of 2, 1 and 1 stages: prefix 4 reaches the last one
    image = pixels(64, 96, seed=6)
    points = ladder_script.measure("measured", [image], [1.0], [0.01])
    assert sorted(points) == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0), (4, 1.0, 1.0, 0.01)]
    assert points[4, 1.0, 1.0, 0.01][0] < points[4, 1.0][0]  # the last level's bits weigh 100x more
    assert codec.load_model("measured").config.quality_ladder == ()  # the network's own ladder is back
    assert points[3, 1.0] == ladder_script.file_point(image, 3, "measured")  # quality 3 of no ladder
    assert ladder_script.label((4, 1.0, 1.0, 0.01)) == "x1/0.01" and ladder_script.label((2, 0.5)) == "x0.5"
