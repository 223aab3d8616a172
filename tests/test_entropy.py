import numpy as np
import pytest

from vqcodec import entropy


def random_grids(seed=0, shapes=((3, 5), (3, 5), (1, 1)), high=256):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, high, size=s) for s in shapes]


@pytest.mark.parametrize("high", [2, 256, 65536])
def test_zstd_round_trip_is_exact(high):
    grids = random_grids(high=high)
    decoded = entropy.zstd_decode(entropy.zstd_encode(grids), [g.shape for g in grids])
    assert len(decoded) == len(grids)
    for a, b in zip(grids, decoded):
        np.testing.assert_array_equal(a, b)


def test_checksum_changes_with_any_index():
    grids = random_grids()
    before = entropy.index_checksum(grids)
    grids[1][2, 4] ^= 1
    assert entropy.index_checksum(grids) != before


def test_checksum_is_crc_of_uint16_le():
    import zlib
    grids = [np.array([[1, 258]])]
    assert entropy.index_checksum(grids) == zlib.crc32(bytes([1, 0, 2, 1]))


def test_smooth_grids_compress_below_eight_bits():
    grids = [np.full((64, 64), 7), np.zeros((64, 64), dtype=np.int64)]
    assert len(entropy.zstd_encode(grids)) < 100


def test_corrupt_payload_raises_value_error():
    grids = random_grids()
    payload = entropy.zstd_encode(grids)
    with pytest.raises(ValueError, match="not a valid zstd frame"):
        entropy.zstd_decode(b"garbage" + payload, [g.shape for g in grids])


def test_payload_for_other_shapes_raises_value_error():
    grids = random_grids()
    payload = entropy.zstd_encode(grids)
    with pytest.raises(ValueError):
        entropy.zstd_decode(payload, [(3, 5)])
    with pytest.raises(ValueError):
        entropy.zstd_decode(payload, [(30, 50)])


def _random_passes(rng: np.random.Generator, count: int, alphabet: int = 16) -> list:
    passes = []
    for _ in range(count):
        freqs = rng.integers(1, 1 << 12, (int(rng.integers(1, 9)), alphabet))
        passes.append((rng.integers(0, alphabet, len(freqs)), freqs))
    return passes


def test_range_payload_cuts_its_last_word_short_and_still_decodes():
    import constriction

    rng = np.random.default_rng(0)
    cut = 0
    for _ in range(40):
        passes = _random_passes(rng, int(rng.integers(1, 6)))
        payload = entropy.range_encode(passes)
        whole = constriction.stream.queue.RangeEncoder()
        for symbols, freqs in passes:
            whole.encode(symbols.astype(np.int32), entropy._categorical(), freqs.astype(np.float32))
        words = 4 * len(whole.get_compressed())
        assert words - 3 <= len(payload) <= words
        cut += len(payload) < words
        decoder = entropy.RangeDecoder(payload)
        assert all(np.array_equal(decoder(freqs), symbols) for symbols, freqs in passes)
    assert cut >= 20  # most payloads lose a byte or more


def test_range_payload_of_many_indices_keeps_whole_words(monkeypatch):
    monkeypatch.setattr(entropy, "TRIM_CHECK_SYMBOLS", 2)  # more symbols than the encoder checks
    passes = _random_passes(np.random.default_rng(1), 4)
    payload = entropy.range_encode(passes)
    assert len(payload) % 4 == 0
    decoder = entropy.RangeDecoder(payload)
    assert all(np.array_equal(decoder(freqs), symbols) for symbols, freqs in passes)
