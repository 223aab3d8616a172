import json

import pytest
import torch

from vqcodec import zoo
from vqcodec.config import ModelConfig
from vqcodec.nn.autoencoder import VQVAE
from vqcodec.weights_io import save_weights

from conftest import installed_model

TINY = ModelConfig(widths=(8, 8), res_blocks=1, latent_dim=4, codebook_size=16, num_stages=3)


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch):
    """A weights folder holding one tiny registered model, searched first."""
    torch.manual_seed(0)
    save_weights(VQVAE(TINY), tmp_path / "tiny.safetensors", name="tiny", description="a tiny test model")
    entry = zoo.register(tmp_path / "tiny.safetensors", default=True)
    monkeypatch.setenv("VQCODEC_WEIGHTS", str(tmp_path))
    zoo._load_checked.cache_clear()
    yield tmp_path, entry
    zoo._load_checked.cache_clear()


def test_bundled_default_model_loads_and_matches_manifest():
    entry = installed_model()
    assert entry.default
    info = entry.info()  # from the file's metadata, without loading the networks
    assert info["stride"] >= 1
    hierarchy = zoo.load_hierarchy(entry)
    if hierarchy is not None:  # quality n: the n-th (stages kept, lambda multiple) of its ladder
        model, priors = hierarchy
        assert info["quality_levels"] == list(range(1, len(model.config.ladder) + 1))
        assert info["enhancement_levels"] == [] and len(priors) == len(model.config.level_strides)
        assert info["stride"] == model.config.stride and info["codebook_size"] == model.config.codebook_size
        return
    model, enhance = zoo.load(entry), zoo.load_enhance(entry)
    levels = zoo.levels_of(model, enhance)
    levels, base = levels.count, levels.base
    # quality 1..base keep that many of the base model's residual stages; each level above adds one
    # stage of the enhancement layer to level `base`
    assert 1 <= base <= model.config.num_stages
    assert levels == base + (enhance.config.num_stages if enhance is not None else 0)
    assert info["quality_levels"] == list(range(1, levels + 1))
    assert info["enhancement_levels"] == list(range(base + 1, levels + 1))
    assert info["stride"] == model.config.stride and info["codebook_size"] == model.config.codebook_size


def test_registered_model_is_listed_and_found(tiny_zoo):
    _, entry = tiny_zoo
    names = [m["name"] for m in zoo.list_models()]
    assert "tiny" in names
    assert zoo.find().name == "tiny"  # first folder's default wins
    assert zoo.find_by_hash(entry.sha256).name == "tiny"
    assert zoo.find_by_hash("00" * 32) is None
    assert zoo.load(entry).config == TINY


def test_tampered_weights_are_refused(tiny_zoo):
    folder, entry = tiny_zoo
    data = bytearray((folder / "tiny.safetensors").read_bytes())
    data[-1] ^= 1
    (folder / "tiny.safetensors").write_bytes(bytes(data))
    with pytest.raises(zoo.ModelError, match="damaged or was replaced"):
        zoo.load(entry)


def test_missing_weights_file_is_a_model_error(tiny_zoo):
    folder, entry = tiny_zoo
    (folder / "tiny.safetensors").unlink()
    with pytest.raises(zoo.ModelError, match="cannot read weights file"):
        zoo.load(entry)


def test_unknown_name_lists_installed_models(tiny_zoo):
    with pytest.raises(zoo.ModelError, match="unknown model 'nope'; installed: .*tiny"):
        zoo.find("nope")


def test_bad_manifest_is_a_model_error(tiny_zoo):
    folder, _ = tiny_zoo
    (folder / "models.json").write_text(json.dumps({"models": [{"file": "x"}]}))
    with pytest.raises(zoo.ModelError, match="not a valid model manifest"):
        zoo.entries()


def test_register_replaces_entry_and_moves_default(tiny_zoo):
    folder, _ = tiny_zoo
    save_weights(VQVAE(TINY), folder / "tiny2.safetensors", name="tiny2", description="second")
    zoo.register(folder / "tiny2.safetensors", default=True)
    models = json.loads((folder / "models.json").read_text())["models"]
    assert [(m["name"], m["default"]) for m in models] == [("tiny", False), ("tiny2", True)]
