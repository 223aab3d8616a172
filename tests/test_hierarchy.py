"""The hierarchical ECVQ model (nn.hierarchy), its priors' coarse-level conditioning, and the
one training loop (training.loop): small shapes, fast."""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqcodec import entropy
from vqcodec.config import HierarchyConfig, PriorConfig
from vqcodec.nn.autoencoder import subpixel_conv_transpose
from vqcodec.nn.hierarchy import HierarchicalVQ, _conv_up, checkerboard
from vqcodec.nn.prior import ContextPrior, IntegerPrior, decode_passes, encode_passes, pass_schedule
from vqcodec.training import loop
from vqcodec.training.hierarchy_prior_task import level_prior_configs

TINY = HierarchyConfig(widths=(8, 8, 8, 8), res_blocks=1, level_dims=(4, 2, 2), level_stages=(2, 1, 1),
                       codebook_size=16, entropy_channels=8)


# TINY with a second stride-4 level of its own projections (NVTC's finer codebook dimension),
# its lambda ladder extended at the same ratio, so that TINY's prefixes keep their lambdas
TINY_REFINED = replace(TINY, level_strides=(16, 8, 4, 4), level_dims=(4, 2, 2, 3), level_stages=(2, 1, 1, 2),
                       lambda_high=TINY.lambda_low * (TINY.lambda_high / TINY.lambda_low) ** (5 / 3))


def tiny_model(seed=0, cfg: HierarchyConfig = TINY) -> HierarchicalVQ:
    torch.manual_seed(seed)
    model = HierarchicalVQ(cfg)
    stages = torch.tensor([sum(cfg.level_stages)] * 2)
    model(torch.rand(2, 3, 32, 32), stages, torch.tensor([0.01, 0.01]))  # k-means init
    return model.eval()


def test_every_prefix_of_the_stage_ladder_decodes_to_an_image():
    model = tiny_model()
    x = torch.rand(1, 3, 48, 32)
    grids, bits = model.encode_indices(x, model.num_stages, 0.01)
    assert [g.shape for g in grids] == [(1, 3, 2)] * 2 + [(1, 6, 4), (1, 12, 8)]
    assert bits.shape == (1,) and float(bits) > 0
    for n in range(1, model.num_stages + 1):
        assert model.decode_indices(grids[:n]).shape == (1, 3, 48, 32)
        prefix, _ = model.encode_indices(x, n, 0.01)
        assert all(torch.equal(a, b) for a, b in zip(prefix, grids[:n]))  # a prefix is the same choice


def test_a_ladder_may_start_at_stride_8():
    torch.manual_seed(0)
    model = HierarchicalVQ(replace(TINY, level_strides=(8, 4), level_dims=(4, 2), level_stages=(2, 1)))
    x = torch.rand(2, 3, 48, 32)
    out, bits, _ = model(x, torch.tensor([3, 1]), torch.tensor([0.01, 0.01]))
    assert out.shape == x.shape and bool((bits > 0).all())
    model.eval()
    grids, _ = model.encode_indices(x[:1], model.num_stages, 0.01)
    assert [g.shape for g in grids] == [(1, 6, 4)] * 2 + [(1, 12, 8)] and model.config.stride == 8
    assert all(model.decode_indices(grids[:n]).shape == (1, 3, 48, 32) for n in (1, 2, 3))
    one_level = HierarchicalVQ(replace(TINY, level_strides=(8,), level_dims=(4,), level_stages=(2,)))
    out, bits, _ = one_level(x, torch.tensor([2, 1]), torch.tensor([0.01, 0.01]))  # a ladder may end at stride 8
    assert out.shape == x.shape and one_level.eval().decode_indices(one_level.encode_indices(x, 2, 0.01)[0]).shape == x.shape
    # the residual blocks sit at the first level's stride; nothing is built at stride 16
    assert "16" not in model.analysis and not hasattr(model, "up16") and len(model.refine8) == TINY.res_blocks


def test_ecvq_choice_trades_distance_for_bits():
    model = tiny_model()
    stage = model.levels[0][0]
    stage.codebook.copy_(torch.eye(4).repeat(4, 1) * torch.arange(1, 5).repeat_interleave(4).view(-1, 1))
    residual = torch.randn(1, 4, 3, 3) * 2
    log2_p = torch.log2(torch.softmax(torch.randn(1, 16, 3, 3) * 4, dim=1))
    nearest = stage.choose(residual, log2_p, None)
    assert torch.equal(stage.choose(residual, log2_p, torch.tensor([1e6])), nearest)
    cheapest = log2_p.argmax(1)
    assert torch.equal(stage.choose(residual, log2_p, torch.tensor([1e-9])), cheapest)


def test_spatial_context_conditions_the_other_half_of_the_positions_on_the_anchor_codes():
    torch.manual_seed(0)
    model = HierarchicalVQ(replace(TINY, spatial_context=True))
    _, bits, _ = model(torch.rand(2, 3, 32, 32), torch.tensor([4, 4]), torch.tensor([0.01, 0.01]))
    bits.sum().backward()
    stage = model.levels[1][0]
    assert stage.context.weight.grad.abs().sum() > 0  # the context learns from the rate
    with torch.no_grad():
        state, residual = torch.randn(1, model.channels(8), 4, 4), torch.randn(1, 2, 4, 4)
        for weight in (None, torch.tensor([0.5])):
            indices, log2_p = stage.code(residual, state, weight)
            plain = stage.log2_probabilities(state).gather(1, indices.unsqueeze(1)).squeeze(1)
            anchors = checkerboard(4, 4)
            assert torch.equal(log2_p[:, anchors], plain[:, anchors])  # anchors: the decoder state only
            assert not torch.allclose(log2_p[:, ~anchors], plain[:, ~anchors])
        assert torch.equal(stage.code(residual, state, None)[0], stage.choose(residual, None, None))


@pytest.fixture
def trained_source(tmp_path):
    """(a tiny trained HierarchyTask, its photo folder, its weights file)."""
    from vqcodec.training.hierarchy_task import HierarchyTask

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    source = HierarchyTask(TINY, [str(folder)], crop_size=32, held_out_per_folder=1, extra_scales=())
    source.model(torch.rand(2, 3, 32, 32), torch.tensor([4, 4]), torch.tensor([0.01, 0.01]))  # k-means init
    source.save_weights(tmp_path / "w.safetensors", {})
    return source, folder, tmp_path / "w.safetensors"


def test_a_warm_start_adds_spatial_context_to_a_trained_model_without_changing_it(trained_source):
    from vqcodec.training.hierarchy_task import HierarchyTask

    source, folder, weights = trained_source
    task = HierarchyTask(replace(TINY, spatial_context=True), [str(folder)], crop_size=32, held_out_per_folder=1,
                         extra_scales=(), warm_start=weights)
    x = torch.rand(1, 3, 32, 48)
    before = source.model.eval().encode_indices(x, 4, 0.01)
    after = task.model.eval().encode_indices(x, 4, 0.01)
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0]))
    torch.testing.assert_close(before[1], after[1])
    with pytest.raises(ValueError, match="does not fit"):
        HierarchyTask(replace(TINY, widths=(8, 8, 16, 16)), [str(folder)], crop_size=32, held_out_per_folder=1,
                      extra_scales=(), warm_start=weights)


def test_a_warm_start_adds_stride_4_residual_blocks_that_start_as_identities(trained_source):
    from vqcodec.training.hierarchy_task import HierarchyTask

    source, folder, weights = trained_source
    task = HierarchyTask(replace(TINY, stride4_blocks=2), [str(folder)], crop_size=32, held_out_per_folder=1,
                         extra_scales=(), warm_start=weights)
    assert len(task.model.detail4) == 2
    x = torch.rand(1, 3, 32, 48)
    source.model.eval()
    task.model.eval()
    grids = source.model.encode_indices(x, 4, 0.01)[0]
    assert all(torch.equal(a, b) for a, b in zip(grids, task.model.encode_indices(x, 4, 0.01)[0]))
    torch.testing.assert_close(task.model.decode_indices(grids), source.model.decode_indices(grids))


def test_a_prefix_conditioned_synthesis_warm_starts_as_the_identity_and_then_decodes_per_prefix(trained_source):
    """prefix_film: onto a model without it, every prefix decodes as before; the decoder
    conditions on the number of stages it has (from the file), and training reaches the
    per-prefix scales only of the prefixes in the batch."""
    from vqcodec.training.hierarchy_task import HierarchyTask

    source, folder, weights = trained_source
    task = HierarchyTask(replace(TINY, prefix_film=True), [str(folder)], crop_size=32, held_out_per_folder=1,
                         extra_scales=(), warm_start=weights)
    x = torch.rand(1, 3, 32, 48)
    source.model.eval()
    model = task.model.eval()
    grids = source.model.encode_indices(x, 4, 0.01)[0]
    assert all(torch.equal(a, b) for a, b in zip(grids, model.encode_indices(x, 4, 0.01)[0]))
    for n in range(1, 5):
        torch.testing.assert_close(model.decode_indices(grids[:n]), source.model.decode_indices(grids[:n]))
    with torch.no_grad():
        model.film[1].scale[1].mul_(2)  # prefix 2's features before the last convolution
    assert not torch.allclose(model.decode_indices(grids[:2]), source.model.decode_indices(grids[:2]))
    torch.testing.assert_close(model.decode_indices(grids[:3]), source.model.decode_indices(grids[:3]))
    model.train()
    out, bits, vq = model(torch.rand(2, 3, 32, 32), torch.tensor([1, 3]), torch.tensor([0.01, 0.01]))
    out.pow(2).mean().backward()
    used = [bool(model.film[0].scale.grad[n - 1].abs().sum() > 0) for n in range(1, 5)]
    assert used == [True, False, True, False]


def test_a_fine_synthesis_warm_starts_as_a_copy_and_then_serves_only_the_prefixes_of_the_last_level(
        trained_source):
    """fine_synthesis: onto a model without it, every prefix decodes as before; after that the
    prefixes that reach the last level (TINY: all 4 stages) decode with their own layers, and
    training reaches each copy only from the examples it decodes."""
    from vqcodec.training.hierarchy_task import HierarchyTask

    source, folder, weights = trained_source
    task = HierarchyTask(replace(TINY, fine_synthesis=True, prefix_film=True), [str(folder)], crop_size=32,
                         held_out_per_folder=1, extra_scales=(), warm_start=weights)
    x = torch.rand(1, 3, 32, 48)
    source.model.eval()
    model = task.model.eval()
    grids = source.model.encode_indices(x, 4, 0.01)[0]
    for n in range(1, 5):
        torch.testing.assert_close(model.decode_indices(grids[:n]), source.model.decode_indices(grids[:n]))
    with torch.no_grad():
        model.fine.up4[-1].bias.add_(0.1)
    assert not torch.allclose(model.decode_indices(grids), source.model.decode_indices(grids))
    torch.testing.assert_close(model.decode_indices(grids[:3]), source.model.decode_indices(grids[:3]))
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():  # each example's image is the one its own copy of the layers makes
        out, _, _ = model(images, torch.tensor([4, 1, 4]), torch.full((3,), 0.01))
        for i, keep in enumerate((4, 1, 4)):
            alone, _, _ = model(images[i:i + 1], torch.tensor([keep]), torch.tensor([0.01]))
            torch.testing.assert_close(out[i], alone[0])
    model.train()
    model.zero_grad()
    out, _, _ = model(images[:2], torch.tensor([4, 4]), torch.full((2,), 0.01))
    out.pow(2).mean().backward()
    assert model.fine.up4[-1].weight.grad.abs().sum() > 0 and model.up4[-1].weight.grad is None


def test_level_priors_continue_from_another_runs_priors(trained_source):
    from vqcodec.training.hierarchy_prior_task import HierarchyPriorTask

    _, folder, weights = trained_source
    prior = PriorConfig(channels=8, layers=1)
    common = dict(batch_size=2, crop_size=32, held_out_per_folder=1, extra_scales=())
    torch.manual_seed(1)
    first = HierarchyPriorTask(weights, [str(folder)], prior, **common)
    first.save_weights(weights.parent / "priors.safetensors", {})
    torch.manual_seed(2)  # a fresh start would draw other weights
    continued = HierarchyPriorTask(weights, [str(folder)], prior, warm_start=weights.parent / "priors.safetensors",
                                   **common)
    fresh = HierarchyPriorTask(weights, [str(folder)], prior, **common)
    bits = [task.evaluate()["prior_bpp"] for task in (first, continued, fresh)]
    assert bits[1] == pytest.approx(bits[0], rel=0.01)  # up to the integer weights' rounding
    assert bits[2] != pytest.approx(bits[0], rel=0.01)


def test_a_warm_start_with_a_new_finest_level_quantizer_keeps_the_coarser_prefixes(trained_source):
    from vqcodec.training.hierarchy_task import HierarchyTask

    source, folder, weights = trained_source
    finer = replace(TINY, level_dims=TINY.level_dims[:-1] + (3,), shared_latent_strides=(TINY.level_strides[-1],))
    task = HierarchyTask(finer, [str(folder)], crop_size=32, held_out_per_folder=1, extra_scales=(),
                         warm_start=weights)
    assert not any(bool(stage.initialized) for stage in task.model.levels[-1])
    coarse = sum(TINY.level_stages[:-1])
    x = torch.rand(1, 3, 32, 48)
    source.model.eval()
    task.model.eval()
    for n in (coarse, coarse + 1):  # the new level adds nothing until it trains
        before = source.model.decode_indices(source.model.encode_indices(x, coarse, 0.01)[0])
        task.model(x, torch.tensor([n]), torch.tensor([0.01]))  # its k-means start
        grids = task.model.encode_indices(x, n, 0.01)[0]
        assert all(torch.equal(a, b) for a, b in zip(grids, source.model.encode_indices(x, coarse, 0.01)[0]))
        torch.testing.assert_close(task.model.decode_indices(grids), before)


def test_a_second_level_at_the_finest_stride_refines_it_from_a_warm_start(trained_source):
    from vqcodec.training.hierarchy_prior_task import HierarchyPriorTask
    from vqcodec.training.hierarchy_task import HierarchyTask

    source, folder, weights = trained_source
    task = HierarchyTask(TINY_REFINED, [str(folder)], crop_size=32, held_out_per_folder=1, extra_scales=(),
                         warm_start=weights)
    model = task.model
    assert model.latent_keys == (None,) * 4 and not any(bool(s.initialized) for s in model.levels[3])
    x = torch.rand(1, 3, 32, 48)
    source.model.eval()
    model.eval()
    model(x, torch.tensor([6]), torch.tensor([0.01]))  # the new level's k-means start (no EMA steps in eval)
    old, _ = source.model.encode_indices(x, 4, 0.01)
    grids, _ = model.encode_indices(x, 6, 0.01)
    assert [g.shape for g in grids[4:]] == [(1, 8, 12)] * 2  # stride 4 again, no upsampling
    assert all(torch.equal(a, b) for a, b in zip(old, grids))
    for n in (4, 5, 6):  # the new level adds nothing until it trains
        torch.testing.assert_close(model.decode_indices(grids[:n]), source.model.decode_indices(old))
    with torch.no_grad():
        for stage in model.levels[3]:
            stage.project_out.weight.normal_()
    assert not torch.allclose(model.decode_indices(grids), source.model.decode_indices(old))
    # its priors continue the source's levels and start the new one fresh
    model_weights = weights.parent / "refined.safetensors"
    task.save_weights(model_weights, {})
    prior = PriorConfig(channels=8, layers=1)
    common = dict(batch_size=2, crop_size=32, held_out_per_folder=1, extra_scales=())
    first = HierarchyPriorTask(weights, [str(folder)], prior, **common)
    first.save_weights(weights.parent / "p.safetensors", {})
    priors = HierarchyPriorTask(model_weights, [str(folder)], prior, warm_start=weights.parent / "p.safetensors",
                                **common)
    assert [c.coarse_factors for c in priors.configs][3] == (4, 4, 2, 1)  # the same stride: factor 1
    bits = priors.evaluate()["prior_bpp"]
    assert len(bits) == 6 and bits[5] > bits[3]
    assert bits[:4] == pytest.approx(first.evaluate()["prior_bpp"], rel=0.01)
    for strides in ((16, 4), (8, 8, 16), (8, 4, 2)):
        with pytest.raises(ValueError, match="level strides"):
            HierarchicalVQ(replace(TINY, level_strides=strides, level_dims=(2,) * len(strides),
                                   level_stages=(1,) * len(strides)))


def test_balanced_prefixes_weigh_every_prefixs_distortion_alike():
    from vqcodec.training.hierarchy_task import rate_distortion_loss

    lambdas, ladder = torch.tensor([0.002, 0.05]), torch.tensor([0.002, 0.01, 0.05])
    for balance, ratio in ((0.0, 25.0), (0.5, 5.0), (True, 1.0)):
        mse = torch.full((2,), 0.01, requires_grad=True)
        rate_distortion_loss(torch.ones(2), mse, torch.zeros(2), lambdas, ladder, balance).backward()
        assert float(mse.grad[1] / mse.grad[0]) == pytest.approx(ratio)  # high-lambda prefix's pull on MSE


def test_todays_vqvae_becomes_the_stride_8_level_and_decodes_as_before(tmp_path):
    from vqcodec.config import ModelConfig
    from vqcodec.nn.autoencoder import VQVAE
    from vqcodec.weights_io import save_weights
    from vqcodec.training.hierarchy_task import HierarchyTask

    torch.manual_seed(0)
    vqvae = VQVAE(ModelConfig(widths=(8, 8, 8), res_blocks=1, latent_dim=4, codebook_size=16, num_stages=3))
    vqvae(torch.rand(2, 3, 32, 32))  # k-means init
    for p in vqvae.decoder.parameters():  # GDNs that are not identities, so that a mix-up shows
        p.data.add_(torch.randn_like(p) * 0.05)
    save_weights(vqvae.eval(), tmp_path / "v.safetensors", name="v", description="", training={})
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    cfg = replace(TINY, level_strides=(8, 4), level_dims=(4, 2), level_stages=(2, 2), shared_latent_strides=(8,))
    task = HierarchyTask(cfg, [str(folder)], crop_size=32, held_out_per_folder=1, extra_scales=(),
                         warm_start=tmp_path / "v.safetensors")
    model = task.model.eval()
    x = torch.rand(1, 3, 32, 48)
    for n in (1, 2):
        grids, _ = model.encode_indices(x, n, None)
        expected = vqvae.encode_indices(x, n)
        agree = torch.stack(grids, 1) == expected  # the same choices, but for float near-ties
        assert agree.float().mean() > 0.9
        torch.testing.assert_close(model.decode_indices(list(expected.unbind(1))),
                                   vqvae.decoder(vqvae.quantizer.dequantize(expected)), atol=1e-5, rtol=1e-4)
    out, _, _ = model(x, torch.tensor([4]), torch.tensor([0.01]))  # the finer level adds nothing yet
    torch.testing.assert_close(out, model(x, torch.tensor([2]), torch.tensor([0.01]))[0])
    with pytest.raises(ValueError, match="maps onto"):
        HierarchyTask(replace(cfg, shared_latent_strides=()), [str(folder)], crop_size=32, held_out_per_folder=1,
                      extra_scales=(), warm_start=tmp_path / "v.safetensors")


def test_rate_term_reaches_the_gradients_of_the_transforms_only_when_on():
    x = torch.rand(2, 3, 32, 32)
    for rate_in_training in (True, False):
        torch.manual_seed(0)
        model = HierarchicalVQ(replace(TINY, rate_in_training=rate_in_training))
        _, bits, _ = model(x, torch.tensor([4, 4]), torch.tensor([0.01, 0.01]))
        bits.sum().backward()
        grad = model.analysis["4"][0].weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == rate_in_training
        assert model.levels[2][0].entropy[0].weight.grad.abs().sum() > 0  # the entropy model learns either way


def coarse_prior(seed=0, scale=3.0):
    cfg = level_prior_configs(TINY, PriorConfig(channels=8, layers=2))[2]
    assert cfg.coarse_factors == (4, 4, 2) and cfg.num_stages == 1
    torch.manual_seed(seed)
    model = ContextPrior(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return cfg, model, IntegerPrior(cfg, model.to_integer())


def test_a_level_prior_codes_its_grid_given_the_coarser_grids_exactly():
    cfg, _, prior = coarse_prior()
    coarse = [torch.randint(0, 16, (3, 2)), torch.randint(0, 16, (3, 2)), torch.randint(0, 16, (6, 4))]
    grid = torch.randint(0, 16, (1, 12, 8))
    passes = encode_passes(prior, grid, coarse)
    payload = entropy.range_encode([(s, f) for _, s, f in passes])
    decoded = decode_passes(prior, 1, 12, 8, entropy.RangeDecoder(payload), coarse=[c.unsqueeze(0) for c in coarse])
    assert torch.equal(decoded[0], grid)
    other = [coarse[0], coarse[1], (coarse[2] + 1) % 16]
    assert any(not np.array_equal(a[2], b[2]) for a, b in zip(passes, encode_passes(prior, grid, other)))
    with pytest.raises(ValueError, match="coarser grids"):
        encode_passes(prior, grid)


def test_the_integer_level_prior_computes_what_training_sees():
    cfg, model, prior = coarse_prior(1, scale=1.0)  # moderate distributions: no code past the table's 15 bits
    coarse = [torch.randint(0, 16, (1, 3, 2)), torch.randint(0, 16, (1, 3, 2)), torch.randint(0, 16, (1, 6, 4))]
    grid = torch.randint(0, 16, (1, 1, 12, 8))
    exact = sum(float(-np.log2(f[np.arange(len(s)), s] / f.sum(1)).sum())
                for _, s, f in encode_passes(prior, grid[0], [c[0] for c in coarse]))
    with torch.no_grad():
        trained = float(model.loss_bits(grid, torch.tensor([0]), None, coarse)) * 12 * 8
    assert trained == pytest.approx(exact, rel=0.02)  # up to the frequency table's rounding


class CountingTask:
    """A least-squares task whose loss history reveals every step taken."""

    def __init__(self, spike_at=None, killed_at=None):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 1)
        self.spike_at, self.killed_at, self.saved = spike_at, killed_at, []
        self.target = torch.randn(64, 1)

    def batch_loss(self, step, generator):
        if step == self.killed_at:
            raise KeyboardInterrupt
        x = torch.randn(64, 4, generator=generator)
        loss = (self.model(x) - self.target).pow(2).mean()
        if self.spike_at is not None and step >= self.spike_at and not getattr(self, "spiked", False):
            loss = loss * 1e6  # one run of exploding losses
            if step >= self.spike_at + 30:
                self.spiked = True
        return loss, {"loss": loss.item()}

    def evaluate(self):
        return {"weight_norm": self.model.weight.detach().norm().item()}

    def save_weights(self, path: Path, record: dict):
        path.write_text(json.dumps(record))
        self.saved.append(record["steps"])


CFG = loop.LoopConfig(steps=12, learning_rate=0.01, warmup_steps=1, checkpoint_every=4, eval_every=6, bf16=False)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    straight = CountingTask()
    loop.run(straight, CFG, tmp_path / "a", progress=False)
    with pytest.raises(KeyboardInterrupt):  # killed during step 10: steps 9-10 are lost
        loop.run(CountingTask(killed_at=10), CFG, tmp_path / "b", progress=False)
    resumed = CountingTask()
    loop.run(resumed, CFG, tmp_path / "b", progress=False)
    assert torch.equal(straight.model.weight, resumed.model.weight)
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [6, 12]
    assert straight.saved == [0, 4, 8, 12]


def test_divergence_rolls_back_to_the_last_checkpoint_with_half_the_learning_rate(tmp_path):
    task = CountingTask(spike_at=150)
    cfg = replace(CFG, steps=300, checkpoint_every=50, eval_every=1000)
    loop.run(task, cfg, tmp_path, progress=False)
    record = json.loads((tmp_path / "weights.safetensors").read_text())
    assert record["rollbacks"] and record["rollbacks"][0]["back_to"] == 150
    assert record["lr_scale"] == 0.5 and record["steps"] == 300


@pytest.mark.parametrize("channels", [(5, 3), (4, 7)])
def test_the_last_upsampling_as_a_subpixel_convolution_is_the_transposed_convolution(channels):
    """The decoder makes the pixels with subpixel_conv_transpose instead of the layer itself: the
    same output, odd sizes and batches included."""
    torch.manual_seed(0)
    layer = _conv_up(*channels).double()
    x = torch.randn(2, channels[0], 5, 8, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(subpixel_conv_transpose(x, layer), layer(x), atol=1e-12)
