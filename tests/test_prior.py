from dataclasses import replace

import numpy as np
import pytest
import torch

from vqcodec import entropy
from vqcodec.config import PriorConfig
from vqcodec.nn import prior as prior_module
from vqcodec.nn.prior import (ContextPrior, IntegerPrior, coding, decode_passes, encode_passes, frequency_table,
                              group_map, pass_schedule)
from vqcodec.nn.prior import exact
from vqcodec.nn.prior.exact import conv3x3_by_shifts, exact_conv3x3, exact_float32, int8_matmul_available

SMALL = PriorConfig(num_stages=3, codebook_size=16, channels=8, layers=2)


def trained_like(cfg: PriorConfig, seed: int = 0) -> ContextPrior:
    """A prior with large random weights, so its distributions are far from uniform."""
    torch.manual_seed(seed)
    model = ContextPrior(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
        model.match_weight.uniform_(-0.5, 0.5)  # an asymmetric copy kernel (x 8 bits)
        if cfg.conditional_match:
            model.diverged_match_weight.uniform_(-0.5, 0.5)
        if cfg.coarse_groups:
            model.far_match_weight.uniform_(-0.5, 0.5)
        model.gate_weight.normal_(0, 0.3)  # a gate that varies with the position
    return model


RASTER = PriorConfig(num_stages=2, codebook_size=16, channels=8, layers=2, schedule="raster")
CONDITIONAL = PriorConfig(num_stages=3, codebook_size=16, channels=8, layers=2, conditional_match=True,
                          nested_stages=2, coarse_groups=True)
CONFIGS = pytest.mark.parametrize("cfg", [SMALL, RASTER, CONDITIONAL], ids=["grouped", "raster", "conditional"])


def round_trip(prior: IntegerPrior, grid: torch.Tensor) -> tuple[bytes, torch.Tensor]:
    passes = encode_passes(prior, grid)
    payload = entropy.range_encode([(s, f) for _, s, f in passes])
    q, rows, cols = grid.shape
    return payload, decode_passes(prior, q, rows, cols, entropy.RangeDecoder(payload))[0]


@CONFIGS
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 1, 1), (2, 1, 7), (2, 7, 3), (2, 12, 17)])
def test_round_trip_any_grid(cfg, shape):
    prior = IntegerPrior(cfg, trained_like(cfg).to_integer())
    grid = torch.randint(0, cfg.codebook_size, shape)
    _, decoded = round_trip(prior, grid)
    assert torch.equal(decoded, grid)


def test_grouped_schedule_codes_every_position_once_coarse_to_fine():
    groups = group_map(SMALL, 0, 9, 10)
    assert groups[0, 0] == 0 and groups[4, 8] == 0 and groups[2, 2] == 1 and groups[0, 2] == 2
    assert groups[1, 1] == 3 and groups[0, 1] == 4 and groups[1, 0] == 4
    assert torch.equal(group_map(SMALL, 1, 3, 3), torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]]))
    passes = list(pass_schedule(SMALL, 3, 9, 10))
    assert len(passes) == 5 + 2 + 2
    for stage in range(3):
        coded = torch.stack([c for s, _, c, _ in passes if s == stage]).int()
        assert torch.equal(coded.sum(0), torch.ones(9, 10, dtype=torch.int))  # each position exactly once
        for s, known, c, _ in passes:  # a pass knows exactly the positions coded before it
            if s == stage:
                assert not (known & c).any()
    assert len(list(pass_schedule(RASTER, 2, 3, 4))) == 2 * 12
    nested = list(pass_schedule(CONDITIONAL, 3, 17, 10))  # stage 0 in 7 groups (coarse), 1 in 5, 2 in 2
    assert len(nested) == 7 + 5 + 2
    assert torch.equal(group_map(CONDITIONAL, 1, 9, 10), group_map(SMALL, 0, 9, 10))
    coarse = group_map(CONDITIONAL, 0, 17, 10)
    assert coarse[0, 0] == coarse[8, 8] == coarse[16, 0] == 0 and coarse[4, 4] == 1 and coarse[0, 4] == coarse[4, 0] == 2
    assert torch.equal(coarse[coarse >= 3] - 2, group_map(SMALL, 0, 17, 10)[coarse >= 3])  # then as before
    assert [far for s, _, _, far in nested] == [False, True, True] + [False] * 11


@CONFIGS
@pytest.mark.parametrize("symbols", [16, 2], ids=["varied", "repetitive"])  # repetitive: many equal prefixes
def test_integer_prior_computes_what_training_sees(cfg, symbols):
    model = trained_like(cfg)
    prior = IntegerPrior(cfg, model.to_integer())
    grid = torch.randint(0, symbols, (cfg.num_stages, 5, 6))
    schedule = list(pass_schedule(cfg, cfg.num_stages, 5, 6))
    table = frequency_table()
    for (stage, _, freqs), (_, known, coded, far) in zip(encode_passes(prior, grid), schedule, strict=True):
        with torch.no_grad():
            logits = model(grid.unsqueeze(0), torch.tensor([stage]), known.unsqueeze(0),
                           far=torch.tensor([far]))[0]  # bits, 1/16 grid
        steps = torch.round(logits[:, coded].t() * 16).long()
        distance = (steps.amax(1, keepdim=True) - steps).clamp(max=len(table) - 1)
        assert torch.equal(table[distance].float(), torch.from_numpy(freqs))


def test_a_good_prior_codes_predictable_grids_in_few_bits():
    """Training lowers the code length on grids with structure (each stage a copy of the first)."""
    torch.manual_seed(0)
    model = ContextPrior(SMALL)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    def batch():
        first = torch.randint(0, SMALL.codebook_size, (8, 1, 6, 6))
        return first.repeat(1, SMALL.num_stages, 1, 1)
    for _ in range(150):
        grids = batch()
        loss = model.loss_bits(grids, torch.randint(0, SMALL.num_stages, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    prior = IntegerPrior(SMALL, model.to_integer())
    grid = batch()[0]
    payload, decoded = round_trip(prior, grid)
    assert torch.equal(decoded, grid)
    uniform_bytes = grid.numel() * np.log2(SMALL.codebook_size) / 8
    # stages 2 and 3 are predictable, so well under the uniform 4 bits per index overall
    assert len(payload) < 0.6 * uniform_bytes


def test_passes_evaluated_together_or_alone_or_beside_another_image_agree(monkeypatch):
    prior = IntegerPrior(SMALL, trained_like(SMALL).to_integer())
    grid = torch.randint(0, SMALL.codebook_size, (3, 10, 11))
    together = encode_passes(prior, grid)
    monkeypatch.setattr(coding, "PASS_CHUNK_POSITIONS", 1)  # one pass per network call
    alone = encode_passes(prior, grid)
    for (s1, sym1, f1), (s2, sym2, f2) in zip(together, alone, strict=True):
        assert s1 == s2 and np.array_equal(sym1, sym2) and np.array_equal(f1, f2)
    # the same pass inside a batch with another image's pass
    other = torch.randint(0, SMALL.codebook_size, (3, 10, 11))
    known, coded = group_map(SMALL, 0, 10, 11) < 3, group_map(SMALL, 0, 10, 11) == 3
    x = prior.pass_inputs(torch.zeros(SMALL.channels, 10, 11), grid[0], 0, known)
    y = prior.pass_inputs(torch.zeros(SMALL.channels, 10, 11), other[0], 0, known)
    (single,) = prior.frequencies(x.unsqueeze(0), [0], [coded], [(grid, known, False)])
    batched = prior.frequencies(torch.stack([y, x]), [0, 0], [coded, coded],
                                [(other, known, False), (grid, known, False)])
    assert torch.equal(single, batched[1])


def test_conditional_match_copies_from_neighbours_with_the_same_earlier_indices():
    """A known neighbour's index is likelier when its earlier-stage indices equal this
    position's (the same partial reconstruction) than when they differ."""
    model = ContextPrior(CONDITIONAL)
    with torch.no_grad():
        model.match_weight.fill_(1.0)  # 8 bits for a neighbour with the same earlier indices
        model.diverged_match_weight.zero_()  # nothing for one whose earlier indices differ
    prior = IntegerPrior(CONDITIONAL, model.to_integer())
    known = torch.zeros(1, 3, dtype=torch.bool)
    known[0, 0] = True  # the left neighbour is known, position (0, 1) is coded
    coded = torch.zeros(1, 3, dtype=torch.bool)
    coded[0, 1] = True

    def probability_of_copy(first_stage: list[int]) -> float:
        grid = torch.tensor([[first_stage], [[5, 0, 0]]])  # stage 1 of the neighbour holds 5
        x = prior.pass_inputs(prior.stage_embedding(0, grid[0]), grid[1], 1, known)
        (freqs,) = prior.frequencies(x.unsqueeze(0), [1], [coded], [(grid, known, False)])
        return float(freqs[0, 5] / freqs[0].sum())

    same, diverged = probability_of_copy([3, 3, 9]), probability_of_copy([3, 4, 9])
    assert same > 0.5 and diverged < 0.1


def test_coarse_groups_copy_from_the_lattice_four_positions_away():
    """With coarse_groups, stage 0's second pass (positions (4, 4) mod 8) sees the x8 lattice
    through the far match weights: an index held 4 positions away becomes likely."""
    cfg = replace(CONDITIONAL, nested_stages=1)
    model = ContextPrior(cfg)
    with torch.no_grad():
        model.far_match_weight.fill_(1.0)  # 8 bits per known position holding the index
    prior = IntegerPrior(cfg, model.to_integer())
    grid = torch.zeros(1, 9, 9, dtype=torch.long)
    grid[0, ::8, ::8] = 7  # the four corners, coded in pass 0
    (_, known, coded, far) = list(pass_schedule(cfg, 1, 9, 9))[1]
    assert far and coded[4, 4] and int(coded.sum()) == 1 and int(known.sum()) == 4
    x = prior.pass_inputs(torch.zeros(cfg.channels, 9, 9), grid[0], 0, known)
    (freqs,) = prior.frequencies(x.unsqueeze(0), [0], [coded], [(grid, known, far)])
    assert float(freqs[0, 7] / freqs[0].sum()) > 0.9


def test_thread_count_does_not_change_frequencies():
    prior = IntegerPrior(SMALL, trained_like(SMALL).to_integer())
    grid = torch.randint(0, SMALL.codebook_size, (3, 40, 40))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = encode_passes(prior, grid)
        torch.set_num_threads(2)
        two = encode_passes(prior, grid)
    finally:
        torch.set_num_threads(threads)
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(one, two, strict=True))


@pytest.mark.skipif(not int8_matmul_available(), reason="torch has no int8 matrix product here")
@pytest.mark.parametrize("cfg", [SMALL, RASTER, CONDITIONAL, replace(SMALL, layers=1), replace(SMALL, layers=0),
                                 replace(CONDITIONAL, channels=32, layers=3)],
                         ids=["grouped", "raster", "conditional", "one-layer", "no-layers", "wide"])
@pytest.mark.parametrize("int8_dot_product", [True, False], ids=["int8-products", "float32-products"])
def test_int8_and_float32_evaluation_give_the_same_frequencies(cfg, int8_dot_product, monkeypatch):
    """The int8 path (int8 activations, the last convolution only where a pass codes) is the
    float32 path's arithmetic on the same integers: identical tables, also at the extremes
    (activations 0 and 255, weights +-127, the largest biases), whether its products run as
    int8 (CPUs with int8 dot products) or as float32 products of the int8 values (others)."""
    monkeypatch.setattr(exact, "has_int8_dot_product", lambda: int8_dot_product)
    tensors = trained_like(cfg).to_integer()
    generator = torch.Generator().manual_seed(1)
    for i in range(cfg.layers):
        weight = tensors[f"conv{i}_weight"]
        tensors[f"conv{i}_weight"] = torch.randint(-127, 128, weight.shape, generator=generator, dtype=weight.dtype)
        tensors[f"conv{i}_weight"][0] = 127  # the largest sum of products, 255 * 127 * 9 C
        tensors[f"conv{i}_bias"][1] = -(1 << 22)  # an output that stays 0
        tensors[f"conv{i}_exponent"][:] = 8
    fast, reference = IntegerPrior(cfg, tensors, int8=True), IntegerPrior(cfg, tensors, int8=False)
    for chunk in (coding.PASS_CHUNK_POSITIONS, 1):  # passes evaluated together, and one at a time
        monkeypatch.setattr(coding, "PASS_CHUNK_POSITIONS", chunk)
        for rows, cols in [(9, 13), (2, 1), (1, 3), (1, 1)]:  # grids one position wide or high too
            grid = torch.randint(0, cfg.codebook_size, (cfg.num_stages, rows, cols), generator=generator)
            for (s1, _, f1), (s2, _, f2) in zip(encode_passes(fast, grid), encode_passes(reference, grid), strict=True):
                assert s1 == s2 and np.array_equal(f1, f2)


@pytest.mark.skipif(not int8_matmul_available(), reason="torch has no int8 matrix product here")
@pytest.mark.parametrize("cfg", [CONDITIONAL, replace(CONDITIONAL, channels=32, layers=3), replace(SMALL, layers=1)],
                         ids=["conditional", "three-layers", "one-layer"])
def test_the_decoder_evaluating_only_what_a_pass_reads_sees_the_encoders_frequencies(cfg):
    """The decoder runs the trunk only near the positions a pass codes (most of a sparse pass's
    grid is skipped); every pass's frequencies must still be those the encoder coded with."""
    prior = IntegerPrior(cfg, trained_like(cfg).to_integer(), int8=True)
    grid = torch.randint(0, cfg.codebook_size, (cfg.num_stages, 19, 26), generator=torch.Generator().manual_seed(2))
    coded = list(encode_passes(prior, grid))

    def replay(frequencies):
        _, symbols, expected = coded.pop(0)
        assert np.array_equal(frequencies, expected)
        return symbols

    assert torch.equal(decode_passes(prior, *grid.shape, replay)[0], grid) and not coded


def test_exact_conv_and_its_fallback_match_float64():
    act = torch.randint(0, 256, (2, 8, 9, 7)).float()
    weight = torch.randint(-127, 128, (8, 72)).float()
    bias = torch.randint(-(1 << 22), 1 << 22, (8,)).float()
    fast = exact_conv3x3(act, weight, bias)
    slow = conv3x3_by_shifts(act, weight.view(8, 8, 3, 3)) + bias.view(1, -1, 1, 1)
    padded = torch.nn.functional.pad(act, (1, 1, 1, 1))
    reference = bias.double().view(1, -1, 1, 1).expand_as(fast).clone()
    kernel = weight.view(8, 8, 3, 3).double()
    for dy in range(3):
        for dx in range(3):
            reference += torch.einsum("oc,pchw->pohw", kernel[:, :, dy, dx], padded[:, :, dy:dy + 9, dx:dx + 7].double())
    assert torch.equal(fast.double(), reference) and torch.equal(slow.double(), reference)


def test_coding_is_exact_and_leaves_torch_settings_as_they_were():
    prior = IntegerPrior(SMALL, trained_like(SMALL).to_integer())
    grid = torch.randint(0, SMALL.codebook_size, (3, 8, 9))
    expected = encode_passes(prior, grid)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")  # bf16 / TF32 matmuls where the hardware has them
    try:
        with exact_float32():
            if hasattr(torch.backends, "fp32_precision"):
                assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
        for (s1, sym1, f1), (s2, sym2, f2) in zip(expected, encode_passes(prior, grid), strict=True):
            assert s1 == s2 and np.array_equal(sym1, sym2) and np.array_equal(f1, f2)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)


def test_frequencies_stay_in_range():
    prior = IntegerPrior(SMALL, trained_like(SMALL, seed=3).to_integer())
    for _, _, freqs in encode_passes(prior, torch.randint(0, 16, (3, 8, 8))):
        assert freqs.min() >= 1 and freqs.max() == 2 ** 15  # the most likely symbol gets 2**15


def test_out_of_range_tensors_are_refused():
    tensors = trained_like(SMALL).to_integer()
    tensors["conv0_weight"][0, 0] = 1000
    with pytest.raises(ValueError, match="conv0_weight"):
        IntegerPrior(SMALL, tensors)
    tensors = trained_like(SMALL).to_integer()
    tensors["head_bias"] = tensors["head_bias"][:, :3]
    with pytest.raises(ValueError, match="head_bias"):
        IntegerPrior(SMALL, tensors)
    with pytest.raises(ValueError, match="too wide"):
        ContextPrior(PriorConfig(channels=64))
    with pytest.raises(ValueError, match="schedule"):
        ContextPrior(PriorConfig(schedule="spiral"))


def test_corrupt_payload_never_returns_silently_wrong_shape():
    prior = IntegerPrior(SMALL, trained_like(SMALL).to_integer())
    grid = torch.randint(0, 16, (3, 6, 6))
    payload, _ = round_trip(prior, grid)
    rng = np.random.default_rng(0)
    for _ in range(20):
        junk = bytearray(payload)
        junk[rng.integers(len(junk))] ^= 1 << int(rng.integers(8))
        try:
            out = decode_passes(prior, 3, 6, 6, entropy.RangeDecoder(bytes(junk)))[0]
        except ValueError:
            continue
        assert out.shape == grid.shape and int(out.max()) < 16  # wrong indices are caught by the CRC


@pytest.mark.parametrize("frequencies", [[[-1.0, 1.0]], [[float("nan"), 1.0]], [0.5, 1.0]])
def test_range_coder_rejects_frequencies_it_cannot_code(frequencies):
    """Negative or NaN frequencies, or not one row per symbol: a ValueError, not a crash (the
    range [1, 2**15] is the caller's to keep: the priors' tables are checked when they load)."""
    with pytest.raises(ValueError):
        entropy.range_encode([(np.array([0]), np.array(frequencies))])
    with pytest.raises(ValueError):
        entropy.RangeDecoder(b"abc")(np.array(frequencies))


@pytest.mark.parametrize("k", [256, 24, 7])
def test_coding_symbols_by_their_intervals_writes_the_words_their_frequencies_do(k):
    """The encoder's fast path (coder_intervals + add_intervals) against constriction's own
    lazy categorical model given the frequencies: the same payload, for peaked, random, flat
    and one-sided tables, the first and last symbols included."""
    rng = np.random.default_rng(k)
    table = frequency_table().float()
    top = len(table) - 1
    fast, passes = entropy.RangeEncoder(), []
    for kind in range(5):
        n = 400
        if kind == 0:  # the prior's own kind: one likely symbol, the rest up to 240 (1/16 bit) less likely
            distances = np.minimum(rng.exponential(50, (n, k)).astype(int), top)
            distances[np.arange(n), rng.integers(0, k, n)] = 0
        elif kind == 1:
            distances = rng.integers(0, top + 1, (n, k))
        elif kind == 2:
            distances = np.zeros((n, k), dtype=int)
        else:  # all mass on the first or on the last symbol
            distances = np.full((n, k), top)
            distances[:, 0 if kind == 3 else k - 1] = 0
        symbols = rng.integers(0, k, n)
        symbols[:40], symbols[40:80] = 0, k - 1
        distances = torch.from_numpy(distances).int()
        passes.append((symbols, table[distances].numpy()))
        fast.add_intervals(*coding.coder_intervals(table, torch.from_numpy(symbols), distances))
    assert fast.payload() == entropy.range_encode(passes)


CLASSES = PriorConfig(num_stages=2, codebook_size=16, channels=8, layers=2, schedule="raster", num_classes=3)


def class_prior() -> tuple[ContextPrior, IntegerPrior]:
    model = trained_like(CLASSES)
    with torch.no_grad():
        model.class_embed.normal_(0, 3)
    return model, IntegerPrior(CLASSES, model.to_integer())


def test_class_conditional_prior_codes_files_without_a_class():
    model, prior = class_prior()
    grid = torch.randint(0, 16, (2, 4, 5))
    _, decoded = round_trip(prior, grid)
    assert torch.equal(decoded, grid)
    assert torch.equal(ContextPrior.from_integer(prior).to_integer()["class_embed"], prior.tensors()["class_embed"])
    # "no class" adds nothing: the same frequencies as the same network without classes
    plain = IntegerPrior(replace(CLASSES, num_classes=0),
                         {k: v for k, v in prior.tensors().items() if k != "class_embed"})
    for (_, _, f1), (_, _, f2) in zip(encode_passes(prior, grid), encode_passes(plain, grid), strict=True):
        assert np.array_equal(f1, f2)


def test_class_conditional_integer_prior_computes_what_training_sees_given_the_class():
    model, prior = class_prior()
    grid = torch.randint(0, 16, (2, 4, 5))
    label = 2
    schedule = list(pass_schedule(CLASSES, 2, 4, 5))
    table = frequency_table()
    passes = list(prior_module.iter_passes(prior, grid, label=label))
    changed = False
    for (stage, _, freqs), (_, known, coded, far), (_, _, unconditional) in zip(
            passes, schedule, encode_passes(prior, grid), strict=True):
        with torch.no_grad():
            stages = torch.tensor([stage])
            earlier = model.earlier_stages(grid.unsqueeze(0), stages) + model.class_context(torch.tensor([label]))
            logits = model(grid.unsqueeze(0), stages, known.unsqueeze(0), earlier, torch.tensor([far]))[0]
        steps = torch.round(logits[:, coded].t() * 16).long()
        distance = (steps.amax(1, keepdim=True) - steps).clamp(max=len(table) - 1)
        assert torch.equal(table[distance].float(), torch.from_numpy(freqs))
        changed |= not np.array_equal(freqs, unconditional)
    assert changed  # the class changes the distributions


def test_sampling_with_classes_follows_the_class_conditional_distributions():
    _, prior = class_prior()
    seen = []

    def sampler(freqs):
        seen.append(freqs.copy())
        return freqs.argmax(1)

    classes = torch.tensor([0, 2])
    grids = decode_passes(prior, 2, 3, 3, sampler, count=2, classes=classes)
    for i, label in enumerate(classes.tolist()):  # each grid's rows in the batched passes
        expected = [f for _, _, f in prior_module.iter_passes(prior, grids[i], label=label)]
        assert all(np.array_equal(batch[i:i + 1], f) for batch, f in zip(seen, expected, strict=True))
    with pytest.raises(ValueError, match="class must be below 3"):
        decode_passes(prior, 2, 3, 3, sampler, count=1, classes=torch.tensor([3]))
    with pytest.raises(ValueError, match="not class-conditional"):
        decode_passes(IntegerPrior(RASTER, trained_like(RASTER).to_integer()), 2, 3, 3, sampler,
                      classes=torch.tensor([0]))


def test_class_conditional_training_loss_uses_the_class():
    torch.manual_seed(0)
    model = ContextPrior(CLASSES)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def batch(classes):  # class c: every index is c, so given the class the grid is free
        return classes.view(-1, 1, 1, 1).expand(-1, 2, 3, 3).clone()

    for _ in range(100):
        classes = torch.randint(0, 3, (8,))
        loss = model.loss_bits(batch(classes), torch.zeros(8, dtype=torch.long), classes=classes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    classes, stage = torch.tensor([0, 1, 2] * 3), torch.zeros(9, dtype=torch.long)
    with torch.no_grad():
        right = model.loss_bits(batch(classes), stage, classes=classes).item()
        wrong = model.loss_bits(batch(classes), stage, classes=(classes + 1) % 3).item()
    assert right < 0.25 * wrong  # it learned to read the class


def test_raster_stages_codes_later_stages_in_checkerboard_halves():
    cfg = replace(RASTER, num_stages=3, raster_stages=1)
    assert len(list(pass_schedule(cfg, 3, 4, 5))) == 20 + 2 + 2
    assert len(list(pass_schedule(RASTER, 2, 4, 5))) == 40  # raster_stages 0: every stage raster
    prior = IntegerPrior(cfg, trained_like(cfg).to_integer())
    grid = torch.randint(0, 16, (3, 4, 5))
    _, decoded = round_trip(prior, grid)
    assert torch.equal(decoded, grid)
    model = trained_like(cfg)  # training scores the half a pass codes, given the other half or nothing
    assert torch.isfinite(model.loss_bits(torch.randint(0, 16, (6, 3, 4, 5)), torch.tensor([0, 1, 2, 2, 1, 0]),
                                          torch.Generator().manual_seed(0)))


def test_guided_sampling_pushes_towards_the_class_and_zero_guidance_is_plain_sampling():
    given = np.array([[60, 30, 10], [60, 30, 10]], dtype=np.float32)  # two grids, with their class
    blind = np.array([[20, 40, 40], [60, 30, 10]], dtype=np.float32)  # the same two without one
    frequencies = np.concatenate([given, blind])
    seen = []

    def record(freqs):
        seen.append(freqs / freqs.sum(axis=1, keepdims=True))
        return np.zeros(len(freqs), dtype=np.int64)

    symbols = prior_module.GuidedSampler(record, 0.0)(frequencies)
    assert np.allclose(seen[-1], given / given.sum(axis=1, keepdims=True))
    assert symbols.tolist() == [0, 0, 0, 0]  # both copies of a grid get the same symbol
    prior_module.GuidedSampler(record, 1.0)(frequencies)
    # grid 0: the class makes symbol 0 three times likelier than without it, so guidance raises it
    assert seen[-1][0, 0] > 0.6 + 0.1 and seen[-1][0].argmax() == 0
    assert np.allclose(seen[-1][1], [0.6, 0.3, 0.1])  # grid 1: the class changes nothing
    with pytest.raises(ValueError, match="guidance must be"):
        prior_module.GuidedSampler(record, -1.0)


def test_bands_split_a_pass_into_whole_rows_in_coding_order(monkeypatch):
    monkeypatch.setattr(coding, "BAND_POSITIONS", 5)
    mask = torch.rand(9, 7, generator=torch.Generator().manual_seed(0)) < 0.5
    mask[4] = True  # a row of 7 positions, more than a band holds: a band of its own
    parts = coding.bands(mask)
    assert len(parts) > 2 and all(part.shape == mask.shape for part in parts)
    assert torch.equal(torch.stack(parts).sum(0), mask.long())  # every position once
    assert all(int(part.sum()) <= 5 or int(part.any(1).sum()) == 1 for part in parts)
    rows = [part.any(1).nonzero()[:, 0] for part in parts]
    assert all(int(a.max()) < int(b.min()) for a, b in zip(rows, rows[1:]))  # row-major order overall
    small = torch.zeros(9, 7, dtype=torch.bool)
    small[2, :3] = small[6, 1] = True
    (alone,) = coding.bands(small)
    assert alone is small  # a pass that fits is one band


@CONFIGS
def test_huge_passes_coded_in_bands_make_the_same_file(cfg, monkeypatch):
    """A pass too large for its frequency tables to exist at once is coded in bands of rows,
    the trunk's windows are made a few rows at a time, and the neighbour pairs of masks too
    large to keep are not kept (memory bounded on huge images); the file is byte for byte the
    same, and decodes."""
    from vqcodec.nn.prior import integer_model

    prior = IntegerPrior(cfg, trained_like(cfg).to_integer())
    grid = torch.randint(0, cfg.codebook_size, (cfg.num_stages, 10, 12), generator=torch.Generator().manual_seed(3))
    whole, decoded = round_trip(prior, grid)
    monkeypatch.setattr(coding, "BAND_POSITIONS", 7)
    monkeypatch.setattr(integer_model, "TRUNK_POSITIONS", 20)
    monkeypatch.setattr(integer_model, "PAIR_CACHE_BYTES", 64)
    prior = IntegerPrior(cfg, trained_like(cfg).to_integer())
    schedule = list(pass_schedule(cfg, cfg.num_stages, 10, 12))
    assert (len(encode_passes(prior, grid)) > len(schedule)) == any(int(coded.sum()) > 7 for _, _, coded, _ in schedule)
    banded, banded_decoded = round_trip(prior, grid)
    assert banded == whole and torch.equal(banded_decoded, grid) and torch.equal(decoded, grid)


@pytest.mark.parametrize("k, stages", [(16, 3), (1 << 16, 6)])  # the second renumbers before it overflows
def test_prefix_keys_are_equal_exactly_where_every_earlier_index_is(k, stages):
    from vqcodec.nn.prior.integer_model import prefix_keys
    g = torch.Generator().manual_seed(3)
    earlier = torch.randint(0, 2, (2, stages, 200), generator=g) * (k - 1)  # few distinct tuples, extreme values
    keys = prefix_keys(earlier, k)
    same = (earlier.unsqueeze(3) == earlier.unsqueeze(2)).all(1)  # (G, P, P)
    assert torch.equal(keys.unsqueeze(2) == keys.unsqueeze(1), same)


def test_dilated_grows_a_mask_by_its_radius_in_rows_and_columns():
    from vqcodec.nn.prior.integer_model import dilated
    g = torch.Generator().manual_seed(4)
    for radius in (1, 2):
        mask = torch.rand(9, 13, generator=g) < 0.08
        expected = torch.nn.functional.max_pool2d(mask[None, None].float(), 2 * radius + 1, 1, radius)[0, 0] > 0
        assert torch.equal(dilated(mask, radius), expected)
