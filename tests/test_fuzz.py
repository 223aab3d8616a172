import random
import time

from fuzzing import decode_outcome, mutate, seed_files


def test_mutated_files_decode_or_raise_vqz_error_quickly():
    """A short run of the harness behind benchmarks/fuzz_decode.py (run there with 100,000 inputs)."""
    seeds = seed_files()
    rng = random.Random(1)
    outcomes = set()
    for _ in range(300):
        data = mutate(seeds, rng)
        started = time.perf_counter()
        outcomes.add(decode_outcome(data))  # anything but VqzError propagates and fails the test
        assert time.perf_counter() - started < 5
    assert "VqzError" in outcomes
