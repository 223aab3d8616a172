import collections
import random

import pytest

from fuzzing import decode_outcome, mutate, seed_files

pytestmark = pytest.mark.slow


def test_mutated_files_decode_or_raise_vqz_error():
    """A short run of the harness behind benchmarks/fuzz_decode.py (run there with 100,000 inputs,
    which also holds the time limit per input)."""
    seeds = seed_files()
    # the unmutated files decode: a decoder that refused everything would pass the rest of the test
    assert collections.Counter(map(decode_outcome, seeds)) == {"decoded": len(seeds)}
    rng = random.Random(1)
    # decode_outcome returns "decoded" or "VqzError"; any other exception propagates and fails the test
    outcomes = collections.Counter(decode_outcome(mutate(seeds, rng)) for _ in range(300))
    assert set(outcomes) <= {"decoded", "VqzError"} and sum(outcomes.values()) == 300, outcomes
    assert outcomes["VqzError"] > 0, outcomes  # the mutations reach the checks, and the checks catch them
