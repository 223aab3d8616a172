"""A hierarchical model (nn.hierarchy) through the codec: installed like any model, its levels
are the file's layers, every quality level round-trips, and the coded grids are the ones the
model chose. A tiny model with untrained priors, installed in a temporary weights folder."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

import vqcodec
from vqcodec import bench, codec, container, images, inference, metrics, zoo
from vqcodec.config import LAMBDA_FACTOR_BOUND, HierarchyConfig, PriorConfig
from vqcodec.container import VqzError
from vqcodec.nn.hierarchy import HierarchicalVQ
from vqcodec.nn.prior import ContextPrior, IntegerPrior
from vqcodec.nn.rdoq import HierarchyRateDistortion
from vqcodec.training.hierarchy_prior_task import level_prior_configs
from vqcodec.weights_io import save_hierarchy, save_with_encoder_settings

from test_hierarchy import TINY, TINY_REFINED, tiny_model


def install_tiny(folder, name, base=TINY, **config):
    """Register tiny_model(cfg=base) (with `config` changes that keep its tensors) and untrained
    level priors in `folder` as model `name`."""
    model = tiny_model(cfg=base)
    if config:
        changed = HierarchicalVQ(dataclasses.replace(base, **config))
        changed.load_state_dict(model.state_dict())
        model = changed.eval()
    priors = []
    for level, cfg in enumerate(level_prior_configs(base, PriorConfig(channels=8, layers=2))):
        torch.manual_seed(level)
        priors.append(IntegerPrior(cfg, ContextPrior(cfg).to_integer()))
    save_hierarchy(folder / f"{name}.safetensors", model, priors, name=name, description="tiny hierarchy",
                   training={})
    return zoo.register(folder / f"{name}.safetensors")


@pytest.fixture(scope="module")
def tiny_hierarchy(tmp_path_factory):
    """The entry of a tiny hierarchical model (levels at stride 16, 8, 4 with 2, 1, 1 stages),
    installed alone in a weights folder that VQCODEC_WEIGHTS points to during the tests."""
    folder = tmp_path_factory.mktemp("weights")
    entry = install_tiny(folder, "tinyh")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VQCODEC_WEIGHTS", str(folder))
        yield entry


def pixels(height=40, width=56, seed=0):
    rng = np.random.default_rng(seed)
    smooth = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3)).astype(np.float32)
    return np.kron(smooth, np.ones((8, 8, 1)))[:height, :width].astype(np.uint8)


def test_its_quality_levels_are_its_stages_coarse_to_fine(tiny_hierarchy):
    info = tiny_hierarchy.info()
    assert info["quality_levels"] == [1, 2, 3, 4] and info["stride"] == 16 and info["codebook_size"] == 16
    assert info["coders"] == ["prior", "zstd"] and info["enhancement_levels"] == []
    expected = {1: ((16, 1),), 2: ((16, 2),), 3: ((16, 2), (8, 1)), 4: ((16, 2), (8, 1), (4, 1))}
    image = pixels()
    for quality, layers in expected.items():
        result = codec.encode_image(image, quality, model="tinyh")
        assert tuple((layer.stride, layer.stages) for layer in result.header.layers) == layers
        decoded = np.asarray(vqcodec.decode(result.data))
        assert decoded.shape == image.shape
        assert np.array_equal(decoded, np.asarray(vqcodec.decode(result.data)))  # the same pixels again


@pytest.mark.parametrize("coder", ["prior", "zstd"])
def test_the_file_holds_the_grids_the_model_chose_and_decodes_to_their_image(tiny_hierarchy, coder):
    image = pixels()
    data = vqcodec.encode(image, quality=4, model="tinyh", coder=coder)
    indices = vqcodec.read_indices(data)
    assert [layer.stride for layer in indices.layers] == [16, 8, 4]
    model, priors = zoo.load_hierarchy(tiny_hierarchy)
    policy = inference.Policy.default()
    lam = float(model.stage_lambdas()[3]) * model.config.encode_lambda_scale
    # ECVQ weighs the bits of the coder's own model: the priors' in the prior coder
    chooser = (HierarchyRateDistortion(priors, [2, 1, 1], [float(model.assignment_weight(torch.tensor(lam)))] * 3,
                                       lambda *coded: None) if coder == "prior" else None)
    chosen = inference.encode_hierarchy(model, images.pad_to_multiple(image, 16), 4, lam, policy, chooser)
    stored = [grid for layer in indices.layers for grid in layer.indices]
    assert all(np.array_equal(a.numpy(), b) for a, b in zip(chosen, stored)) and len(stored) == 4
    expected = inference.decode_hierarchy(model, chosen, policy)[:40, :56]
    assert np.array_equal(np.asarray(vqcodec.decode(data)), expected)
    assert np.array_equal(np.asarray(vqcodec.decode_indices(indices)), expected)


def test_a_quality_ladder_adds_levels_between_prefixes_at_a_smaller_lambda(tiny_hierarchy, tmp_path, monkeypatch):
    ladder = ((1, 1.0), (2, 1.0), (3, 0.01), (3, 1.0), (4, 1.0))
    monkeypatch.setenv("VQCODEC_WEIGHTS", str(tmp_path))
    entry = install_tiny(tmp_path, "laddered", quality_ladder=ladder)
    assert entry.info()["quality_levels"] == [1, 2, 3, 4, 5]
    image = pixels(64, 96, seed=4)
    files = {q: codec.encode_image(image, q, model="laddered") for q in (3, 4)}
    for result in files.values():  # both keep 3 stages: the stride-16 level's 2 and one at stride 8
        assert tuple((layer.stride, layer.stages) for layer in result.header.layers) == ((16, 2), (8, 1))
        assert vqcodec.decode(result.data).size == (96, 64)
    assert len(files[3].data) < len(files[4].data)  # the smaller lambda weighs bits more
    install_tiny(tmp_path, "plain")  # without a ladder, quality 3 is the same prefix at its own lambda
    plain = vqcodec.read_indices(codec.encode_image(image, 3, model="plain").data)
    ours = vqcodec.read_indices(files[4].data)
    assert all(np.array_equal(a, b) for x, y in zip(plain.layers, ours.layers) for a, b in zip(x.indices, y.indices))
    Image.fromarray(image).save(tmp_path / "image.png")
    usage = bench.run_bench([tmp_path / "image.png"], codecs=["vqz"], model="laddered", progress=False)["usage"]
    assert [len(level["stages"]) for level in usage] == [1, 2, 3, 3, 4]  # each level's own stages
    for bad in (((0, 1.0),), ((2, 1.0), (1, 1.0)), ((1, 0.0),), ((5, 1.0),), ((2, 1.0), (2, 0.5)), ((1, 1), (1, 1))):
        with pytest.raises(ValueError, match="quality_ladder"):
            HierarchyConfig(**{**dataclasses.asdict(TINY), "quality_ladder": bad})


def test_a_ladder_level_may_weigh_bits_differently_at_each_level(tmp_path, monkeypatch):
    monkeypatch.setenv("VQCODEC_WEIGHTS", str(tmp_path))
    install_tiny(tmp_path, "split", quality_ladder=((4, 1.0, 1.0, 0.01), (4, 1.0)))
    image = pixels(64, 96, seed=4)
    files = [codec.encode_image(image, q, model="split") for q in (1, 2)]
    low, high = (vqcodec.read_indices(result.data) for result in files)
    for coarse_low, coarse_high in zip(low.layers[:2], high.layers[:2]):  # the same multiple there
        assert np.array_equal(coarse_low.indices, coarse_high.indices)
    assert not np.array_equal(low.layers[2].indices, high.layers[2].indices)
    assert len(files[0].data) < len(files[1].data)  # the last level's bits weigh 100x more
    for bad in (((4, 1.0, 1.0),), ((4, 1.0), (4, 1.0, 1.0, 0.5)), ((4, 1.0, 0.0, 1.0),)):
        with pytest.raises(ValueError, match="quality_ladder"):
            HierarchyConfig(**{**dataclasses.asdict(TINY), "quality_ladder": bad})


def test_a_new_quality_ladder_makes_a_new_model_file_that_still_decodes_the_old_files(tmp_path, monkeypatch):
    monkeypatch.setenv("VQCODEC_WEIGHTS", str(tmp_path))
    old = install_tiny(tmp_path, "relabelled")
    image = pixels(64, 96, seed=5)
    old_file = codec.encode_image(image, 3, model="relabelled").data
    old_pixels = np.asarray(vqcodec.decode(old_file))
    ladder = ((1, 1.0), (3, 1.0, 1.0, 0.5), (3, 1.0), (4, 1.0))
    with pytest.raises(ValueError, match="not encoder settings: \\['level_stages'\\]"):  # it would change the networks
        save_with_encoder_settings(old.path, tmp_path / "other.safetensors", level_stages=(2, 2))
    sha256 = save_with_encoder_settings(old.path, tmp_path / "relabelled.safetensors",
                                        quality_ladder=[list(level) for level in ladder])  # as JSON gives it
    (tmp_path / "relabelled.safetensors.bak").unlink(missing_ok=True)
    new = zoo.register(tmp_path / "relabelled.safetensors")  # replaces the old entry and its file
    assert new.sha256 == sha256 != old.sha256 and new.decodes_files_of == (old.sha256,)
    assert zoo.find_by_hash(old.sha256).sha256 == sha256
    assert np.array_equal(np.asarray(vqcodec.decode(old_file)), old_pixels)
    assert codec.describe(old_file)["model_sha256"] != sha256  # names the file that made it, not ours
    assert new.info()["quality_levels"] == [1, 2, 3, 4]
    new_file = codec.encode_image(image, 3, model="relabelled").data  # quality 3 is now (3, 1.0)
    assert container.unpack(new_file).header.model_prefix == container.model_prefix(sha256)
    same = zip(vqcodec.read_indices(new_file).layers, vqcodec.read_indices(old_file).layers)
    assert all(np.array_equal(a.indices, b.indices) for a, b in same)  # the same grids, now by another name


def test_the_lambda_factor_follows_the_images_activity_and_stays_bounded():
    config = dataclasses.replace(TINY, activity_exponent=0.5, activity_reference=100.0)
    assert dataclasses.replace(TINY).lambda_factor(1.0) == 1.0  # exponent 0: one lambda for all
    assert config.lambda_factor(100.0) == 1.0 and config.lambda_factor(25.0) == pytest.approx(2.0)
    assert config.lambda_factor(400.0) == pytest.approx(0.5)
    assert config.lambda_factor(0.0) == LAMBDA_FACTOR_BOUND and config.lambda_factor(1e9) == 1 / LAMBDA_FACTOR_BOUND
    for bad in ({"activity_exponent": -1.0}, {"activity_reference": 0.0}):
        with pytest.raises(ValueError, match="activity"):
            dataclasses.replace(TINY, **bad)


def test_an_images_lambda_factor_multiplies_every_levels_lambda(tmp_path, monkeypatch):
    monkeypatch.setenv("VQCODEC_WEIGHTS", str(tmp_path))
    image = pixels(64, 96, seed=5)
    ladder = ((1, 1.0), (2, 1.0), (3, 1.0, 1.0, 0.5), (4, 1.0))
    # activity 16x below the reference at exponent 0.5: every lambda x 4
    install_tiny(tmp_path, "scaled", quality_ladder=ladder, activity_exponent=0.5,
                 activity_reference=16 * metrics.activity(image))
    install_tiny(tmp_path, "plain", quality_ladder=tuple((n, *[4 * m for m in multiples]) for n, *multiples in ladder))
    install_tiny(tmp_path, "unscaled", quality_ladder=ladder)
    changed = 0
    for quality in range(1, 5):
        scaled, plain, unscaled = (vqcodec.read_indices(codec.encode_image(image, quality, model=name).data)
                                   for name in ("scaled", "plain", "unscaled"))
        assert all(np.array_equal(a.indices, b.indices) for a, b in zip(scaled.layers, plain.layers))
        changed += not all(np.array_equal(a.indices, b.indices) for a, b in zip(scaled.layers, unscaled.layers))
    assert changed  # and the factor does change the choice


def test_two_levels_at_one_stride_are_two_layers_of_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("VQCODEC_WEIGHTS", str(tmp_path))
    install_tiny(tmp_path, "refined", base=TINY_REFINED)
    image = pixels(64, 96, seed=2)
    decoded = {}
    for quality, layers in ((4, ((16, 2), (8, 1), (4, 1))), (6, ((16, 2), (8, 1), (4, 1), (4, 2)))):
        for coder in ("prior", "zstd"):
            result = codec.encode_image(image, quality, model="refined", coder=coder)
            assert tuple((layer.stride, layer.stages) for layer in result.header.layers) == layers
            indices = vqcodec.read_indices(result.data)
            assert [layer.indices.shape for layer in indices.layers][-1] == (layers[-1][1], 16, 24)
            decoded[quality, coder] = np.asarray(vqcodec.decode(result.data))
            assert np.array_equal(decoded[quality, coder], np.asarray(vqcodec.decode_indices(indices)))
    assert not np.array_equal(decoded[4, "prior"], decoded[6, "prior"])
    assert [im.size for im in codec.generate(1, model="refined", size=(32, 48), seed=1)] == [(48, 32)]
    parsed = container.unpack(codec.encode_image(image, 6, model="refined", coder="zstd").data)
    skipped = dataclasses.replace(parsed.header, layers=parsed.header.layers[:2] + parsed.header.layers[3:])
    with pytest.raises(VqzError, match="cannot decode the layers"):  # the second stride-4 layer needs the first
        vqcodec.decode(container.pack(skipped, parsed.index_payload, parsed.alpha_payload, parsed.metadata))


def test_a_file_whose_finer_level_skips_a_coarser_stage_is_refused(tiny_hierarchy):
    data = vqcodec.encode(pixels(), quality=3, model="tinyh", coder="zstd")
    parsed = container.unpack(data)
    bad = dataclasses.replace(parsed.header, layers=(container.Layer(16, 1), container.Layer(8, 1)))
    forged = container.pack(bad, parsed.index_payload, parsed.alpha_payload, parsed.metadata)
    with pytest.raises(VqzError, match="builds on 2 stages of the stride-16 layer"):
        vqcodec.decode(forged)


def test_nearest_codes_and_refinement(tiny_hierarchy):
    image = pixels()
    nearest = codec.encode_image(image, 4, model="tinyh", rate_tradeoff=0)
    assert vqcodec.decode(nearest.data).size == (56, 40)
    with pytest.raises(ValueError, match="hierarchical"):
        codec.encode_image(image, 2, model="tinyh", refine_steps=1)


def test_a_larger_rate_tradeoff_spends_fewer_bits_under_the_priors(tiny_hierarchy):
    image = pixels(64, 96, seed=4)
    sizes = [len(codec.encode_image(image, 4, model="tinyh", rate_tradeoff=t).data) for t in (0, 0.1, 1000)]
    assert sizes[2] < sizes[0] and sizes[1] <= sizes[0]


def test_generate_samples_every_level_given_the_coarser_ones(tiny_hierarchy):
    first = codec.generate(2, model="tinyh", size=(32, 48), seed=3)
    again = codec.generate(2, model="tinyh", size=(32, 48), seed=3)
    assert [im.size for im in first] == [(48, 32)] * 2
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again))
    assert [im.size for im in codec.generate(1, model="tinyh", size=(32, 48), quality=1)] == [(48, 32)]


def test_models_lists_it(tiny_hierarchy, runner):
    from vqcodec.cli import main

    result = runner.invoke(main, ["models", "--json"])
    assert result.exit_code == 0, result.output
    listed = {m["name"]: m for m in json.loads(result.output)}
    assert listed["tinyh"]["default_quality"] == 2


def test_priors_trained_again_make_a_new_file_that_keeps_the_earlier_ones_for_older_files(tmp_path, monkeypatch):
    """weights_io.save_with_earlier_priors: the same networks with new level priors; the files each
    earlier release made decode exactly as they did, with the priors they were coded with, also
    after a second refit; new files are coded with the new priors."""
    from vqcodec.weights_io import save_with_earlier_priors

    monkeypatch.setenv("VQCODEC_WEIGHTS", str(tmp_path))
    image = pixels(64, 96, seed=6)
    releases = [install_tiny(tmp_path, "refit")]
    files = [codec.encode_image(image, 4, model="refit").data]
    decoded = [np.asarray(vqcodec.decode(files[0]))]
    model, first_priors = zoo.load_hierarchy(releases[0])
    coded_with = [first_priors]  # each release's own priors
    for seed in (10, 20):  # two refits: "trained" priors of their own
        priors = []
        for level, cfg in enumerate(level_prior_configs(TINY, PriorConfig(channels=8, layers=2))):
            torch.manual_seed(seed + level)
            priors.append(IntegerPrior(cfg, ContextPrior(cfg).to_integer()))
        save_hierarchy(tmp_path / "new.safetensors", model, priors, name="refit", description="tiny", training={})
        sha256 = save_with_earlier_priors(tmp_path / "new.safetensors", releases[-1].path,
                                          tmp_path / "refit.safetensors")
        (tmp_path / "refit.safetensors.bak").unlink(missing_ok=True)
        releases.append(zoo.register(tmp_path / "refit.safetensors"))
        coded_with.append(priors)
        assert releases[-1].sha256 == sha256 and releases[-1].decodes_files_of == tuple(r.sha256 for r in releases[:-1])
        files.append(codec.encode_image(image, 4, model="refit").data)
        decoded.append(np.asarray(vqcodec.decode(files[-1])))
        for data, pixels_then in zip(files, decoded):
            assert np.array_equal(np.asarray(vqcodec.decode(data)), pixels_then)
    for release, expected in zip(releases, coded_with):
        made_by = None if release is releases[-1] else release.sha256[:16]
        kept = zoo.load_hierarchy(releases[-1], made_by=made_by)[1]
        assert all(torch.equal(a, b) for x, y in zip(kept, expected)
                   for a, b in zip(x.tensors().values(), y.tensors().values()))
    assert len({data for data in files}) == 3  # the same grids coded with other priors: other bytes
    other = tiny_model(cfg=TINY_REFINED)
    save_hierarchy(tmp_path / "other.safetensors", other, priors, name="other", description="tiny", training={})
    with pytest.raises(ValueError, match="does not hold the networks"):
        save_with_earlier_priors(tmp_path / "other.safetensors", releases[-1].path, tmp_path / "x.safetensors")
