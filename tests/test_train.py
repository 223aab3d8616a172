import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import killed_at_step

from vqcodec import train as training
from vqcodec.cli import main
from vqcodec.config import TrainConfig
from vqcodec.training import data as training_data, loop
from vqcodec.weights_io import load_vqvae, read_metadata

TINY = {"model": {"widths": [8, 8], "res_blocks": 1, "latent_dim": 4, "codebook_size": 16, "num_stages": 2},
        "train": {"batch_size": 2, "crop_size": 32, "warmup_steps": 1, "checkpoint_every": 2,
                  "eval_every": 2, "held_out_images": 1, "extra_scales": [0.5], "threads": 1}}


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    for i in range(3):
        noise = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(noise).resize((80, 60), Image.BILINEAR).save(data / ("sub" if i else "") / f"{i}.png")
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    return tmp_path


def train_cli(folder, steps):
    return CliRunner().invoke(main, ["train", "--data", str(folder / "data"), "--out", str(folder / "w" / "tiny.safetensors"),
                                     "--config", str(folder / "tiny.json"), "--steps", str(steps)],
                              catch_exceptions=False)


def test_train_writes_registered_weights_and_resumes(folder):
    result = train_cli(folder, 2)
    assert result.exit_code == 0, result.output
    weights = folder / "w" / "tiny.safetensors"
    assert json.loads(read_metadata(weights)["training"])["steps"] == 2
    assert (folder / "w" / "tiny.ckpt").exists()
    manifest = json.loads((folder / "w" / "models.json").read_text())
    assert manifest["models"][0]["name"] == "tiny"
    before = load_vqvae(weights).state_dict()

    result = train_cli(folder, 4)  # picks up tiny.ckpt at step 2
    assert result.exit_code == 0, result.output
    meta = read_metadata(weights)
    assert json.loads(meta["training"])["steps"] == 4
    assert json.loads(meta["model_config"])["num_stages"] == 2
    log = [json.loads(line) for line in (folder / "w" / "tiny.log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [2, 4]
    assert set(log[-1]["held_out_psnr"]) == {"1", "2"}
    assert all(0 < u["live_fraction"] <= 1 for u in log[-1]["usage"])
    after = load_vqvae(weights).state_dict()
    assert not torch.equal(before["decoder.net.0.weight"], after["decoder.net.0.weight"])


def test_same_seed_same_weights(folder, tmp_path):
    model_config, train_config = training.read_config_file(folder / "tiny.json")
    states = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        out = training.train(folder / "data", tmp_path / run / "x.safetensors", model_config=model_config,
                             train_config=replace(train_config, steps=2), name="x", description="x",
                             progress=False)
        states.append(load_vqvae(out).state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"no_such_field": 1}}))
    with pytest.raises(ValueError, match="no_such_field"):
        training.read_config_file(bad)
    bad.write_text(json.dumps({"modle": {}}))
    with pytest.raises(ValueError, match="unknown sections"):
        training.read_config_file(bad)


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 1 and "no images" in result.output


def test_learning_rate_schedule():
    cfg = loop.LoopConfig.of(TrainConfig(steps=100, warmup_steps=10, learning_rate=1.0, lr_final_fraction=0.1))
    assert loop.learning_rate(0, cfg) == pytest.approx(0.1)
    assert loop.learning_rate(10, cfg) == pytest.approx(1.0)
    assert loop.learning_rate(100, cfg) == pytest.approx(0.1)
    rates = [loop.learning_rate(s, cfg) for s in range(10, 101)]
    assert rates == sorted(rates, reverse=True)


class LineTask:
    """A one-parameter task: fit w to 3."""

    def __init__(self):
        self.model = torch.nn.Linear(1, 1, bias=False)

    def batch_loss(self, step, generator):
        return (self.model.weight - 3).pow(2).sum(), {}

    def evaluate(self):
        return {"w": self.model.weight.item()}

    def save_weights(self, path, record):
        path.write_text(json.dumps({"w": self.model.weight.item(), "steps": record["steps"]}))


def test_stop_at_ends_a_run_early_on_the_learning_rate_schedule_of_its_steps(tmp_path):
    """A run cut short (stop_at) is the first stop_at steps of the full schedule: the same
    weights as that run's checkpoint there, and done (finished) there."""
    full = loop.LoopConfig(steps=8, learning_rate=0.1, warmup_steps=1, checkpoint_every=4, eval_every=4, bf16=False)
    torch.manual_seed(0)
    whole = LineTask()
    with killed_at_step(LineTask, 5):
        with pytest.raises(KeyboardInterrupt):
            loop.run(whole, full, tmp_path / "full", progress=False)
    at_4 = json.loads((tmp_path / "full" / "weights.safetensors").read_text())
    torch.manual_seed(0)
    cut = loop.LoopConfig(**{**full.__dict__, "stop_at": 4})
    assert cut.last_step == 4
    loop.run(LineTask(), cut, tmp_path / "cut", progress=False)
    assert json.loads((tmp_path / "cut" / "weights.safetensors").read_text()) == at_4 == {"w": at_4["w"], "steps": 4}
    assert loop.finished(loop.RunFiles.in_folder(tmp_path / "cut"), cut)
    assert not loop.finished(loop.RunFiles.in_folder(tmp_path / "cut"), full)


@pytest.mark.slow
def test_data_parallel_training_with_gloo_in_two_processes(folder):
    """The torchrun path: 2 CPU processes, gloo backend, codebooks kept in sync."""
    import os
    import subprocess
    import sys
    out = folder / "ddp" / "tiny.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "vqcodec", "train", "--data", str(folder / "data"), "--out", str(out),
         "--config", str(folder / "tiny.json"), "--steps", "2"],
        capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    training_record = json.loads(read_metadata(out)["training"])
    assert training_record["world_size"] == 2 and training_record["steps"] == 2
    assert json.loads((out.parent / "models.json").read_text())["models"][0]["name"] == "tiny"


TINY_PRIOR = {"prior": {"channels": 8}, "train": {"steps": 4, "batch_size": 2, "crop_size": 4, "held_out_images": 1,
                                                 "extra_scales": [], "eval_every": 2, "checkpoint_every": 2,
                                                 "threads": 1}}


def test_train_prior_adds_a_prior_that_codes_and_resumes(folder, monkeypatch):
    import numpy as np
    import vqcodec
    assert train_cli(folder, 2).exit_code == 0
    (folder / "prior.json").write_text(json.dumps(TINY_PRIOR))
    weights = folder / "w" / "tiny.safetensors"

    def train_prior(steps):
        return CliRunner().invoke(main, ["train-prior", "--weights", str(weights), "--data", str(folder / "data"),
                                         "--out", str(folder / "w" / "tinyp.safetensors"), "--config",
                                         str(folder / "prior.json"), "--steps", str(steps)], catch_exceptions=False)
    result = train_prior(2)
    assert result.exit_code == 0, result.output
    meta = read_metadata(folder / "w" / "tinyp.safetensors")
    assert json.loads(meta["prior_config"]) == {"channels": 8, "codebook_size": 16, "layers": 2, "num_stages": 2,
                                                "schedule": "grouped", "conditional_match": False,
                                                "nested_stages": 1, "coarse_groups": False, "coarse_factors": [],
                                                "num_classes": 0, "raster_stages": 0}
    assert (folder / "w" / "tinyp.grids.pt").exists() and (folder / "w" / "tinyp.prior.ckpt").exists()
    result = train_prior(4)  # resumes from the checkpoint, reuses the cached grids
    assert result.exit_code == 0, result.output
    record = json.loads(read_metadata(folder / "w" / "tinyp.safetensors")["prior_training"])
    assert record["steps"] == 4 and [e["step"] for e in record["log"]] == [2, 4]
    assert len(record["log"][-1]["held_out_bits_per_stage"]) == 2
    monkeypatch.setenv("VQCODEC_WEIGHTS", str(folder / "w"))
    pixels = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    data = vqcodec.encode(pixels, model="tiny", coder="prior", quality=2)
    assert vqcodec.decode(data).size == (20, 12)


def test_train_prior_refines_a_prior_on_rate_aware_grids(folder, monkeypatch):
    import vqcodec
    assert train_cli(folder, 2).exit_code == 0
    weights, refined = folder / "w" / "tiny.safetensors", folder / "w" / "tinyr.safetensors"

    def train_prior(source, out, config):
        (folder / "prior.json").write_text(json.dumps(config))
        return CliRunner().invoke(main, ["train-prior", "--weights", str(source), "--data", str(folder / "data"),
                                         "--out", str(out), "--config", str(folder / "prior.json")])
    refine = {"prior": {"channels": 8, "conditional_match": True, "nested_stages": 2},
              "train": {**TINY_PRIOR["train"], "rate_tradeoff": 0.2}}
    result = train_prior(weights, refined, refine)  # the VQ-VAE alone has no prior to refine
    assert result.exit_code != 0 and "has no prior to refine" in result.output and not refined.exists()
    assert train_prior(weights, folder / "w" / "tinyp.safetensors", TINY_PRIOR).exit_code == 0
    wider = {**refine, "prior": {**refine["prior"], "channels": 16}}
    result = train_prior(folder / "w" / "tinyp.safetensors", refined, wider)
    assert result.exit_code != 0 and "cannot be continued" in result.output and not refined.exists()
    result = train_prior(folder / "w" / "tinyp.safetensors", refined, refine)
    assert result.exit_code == 0, result.output
    meta = read_metadata(refined)
    assert json.loads(meta["prior_config"])["nested_stages"] == 2
    assert json.loads(meta["prior_training"])["train_config"]["rate_tradeoff"] == 0.2
    monkeypatch.setenv("VQCODEC_WEIGHTS", str(folder / "w"))
    pixels = np.random.default_rng(1).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    data = vqcodec.encode(pixels, model="tiny", coder="prior", quality=2)  # now the refined file
    assert vqcodec.decode(data).size == (20, 12)


TINY_ENHANCE = {"enhance": {"widths": [8], "res_blocks": 1, "latent_dim": 4, "codebook_size": 16, "num_stages": 2},
                "train": TINY["train"]}


def test_train_enhance_adds_levels_that_code_and_resume(folder, monkeypatch):
    import vqcodec
    from vqcodec import codec, container
    assert train_cli(folder, 2).exit_code == 0
    (folder / "prior.json").write_text(json.dumps(TINY_PRIOR))
    (folder / "enhance.json").write_text(json.dumps(TINY_ENHANCE))
    base, out = folder / "w" / "tinyp.safetensors", folder / "w" / "tinye.safetensors"
    assert CliRunner().invoke(main, ["train-prior", "--weights", str(folder / "w" / "tiny.safetensors"),
                                     "--data", str(folder / "data"), "--out", str(base),
                                     "--config", str(folder / "prior.json")]).exit_code == 0
    monkeypatch.setenv("VQCODEC_WEIGHTS", str(folder / "w"))
    pixels = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    made_by_base = vqcodec.encode(pixels, model="tiny", quality=2)
    decoded_by_base = np.asarray(vqcodec.decode(made_by_base))

    def train_enhance(steps, *extra):
        return CliRunner().invoke(main, ["train-enhance", "--weights", str(base), "--data", str(folder / "data"),
                                         "--out", str(out), "--config", str(folder / "enhance.json"),
                                         "--steps", str(steps), *extra], catch_exceptions=False)
    result = train_enhance(2)
    assert result.exit_code == 0, result.output
    assert (folder / "w" / "tinye.pairs.pt").exists() and (folder / "w" / "tinye.enhance.ckpt").exists()
    result = train_enhance(4, "--description", "tiny with detail")  # resumes; reuses the base reconstructions
    assert result.exit_code == 0, result.output
    meta = read_metadata(out)
    assert meta["description"] == "tiny with detail"
    record = json.loads(meta["enhance_training"])
    assert record["steps"] == 4 and [e["step"] for e in record["log"]] == [2, 4]
    assert len(record["log"][-1]["psnr"]) == 3  # the base, then each enhancement level
    assert "prior_config" in meta  # the base model's prior travels along

    info = next(m for m in vqcodec.list_models() if m["name"] == "tiny")
    assert info["quality_levels"] == [1, 2, 3, 4] and info["enhancement_levels"] == [3, 4]
    assert info["default_quality"] == 1  # the default stays a base level
    # "tiny" is now the file with the layer; files made before it still decode, to the same pixels
    assert np.array_equal(np.asarray(vqcodec.decode(made_by_base)), decoded_by_base)
    # without a prior for the layer, its levels default to zstd and refuse the prior coder
    assert container.unpack(vqcodec.encode(pixels, model="tiny", quality=3)).header.coder == "zstd"
    with pytest.raises(ValueError, match="enhancement levels have no prior"):
        vqcodec.encode(pixels, model="tiny", quality=3, coder="prior")
    result = CliRunner().invoke(main, ["train-prior", "--layer", "enhance", "--weights", str(out), "--data",
                                       str(folder / "data"), "--out", str(out), "--config", str(folder / "prior.json")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(read_metadata(out)["enhance_prior_config"])["num_stages"] == 2
    for coder in ("prior", "zstd"):
        data = vqcodec.encode(pixels, model="tiny", coder=coder, quality=4)
        assert container.unpack(data).header.coder == coder
        layers = codec.read_indices(data).layers
        assert [(layer.stride, layer.indices.shape) for layer in layers] == [(4, (2, 3, 5)), (2, (2, 6, 10))]
        assert vqcodec.decode(data).size == (20, 12)
    with pytest.raises(ValueError, match="from 1 to 4"):
        vqcodec.encode(pixels, model="tiny", quality=5)


def test_held_out_spread_and_a_class_conditional_prior(tmp_path, monkeypatch):
    """Data sorted by class (as mnist5k.npz): the held-out images spread over it, and a prior
    that learns the classes from the .npz's labels and samples the class asked for."""
    from vqcodec import codec
    assert training_data.held_out_positions(10, 3, False) == [7, 8, 9]
    assert training_data.held_out_positions(10, 2, True) == [4, 9]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.repeat(np.arange(3), 4))
    pool, held, names = training_data.load_training_data(tmp_path / "d.npz", 3, (), 16, 4, spread=True)
    assert names == ["d.npz[3]", "d.npz[7]", "d.npz[11]"] and len(pool) == 9
    assert np.array_equal(held[1][0].numpy(), images[7])
    spread = {"held_out_images": 3, "held_out_spread": True, "extra_scales": []}
    (tmp_path / "m.json").write_text(json.dumps({"model": TINY["model"],
                                                 "train": {**TINY["train"], "crop_size": 16, **spread}}))
    (tmp_path / "p.json").write_text(json.dumps({
        "prior": {"channels": 8, "schedule": "raster", "raster_stages": 1, "num_classes": 3},
        "train": {**TINY_PRIOR["train"], "mirror": False, **spread}}))
    run = CliRunner().invoke
    weights = tmp_path / "w"
    result = run(main, ["train", "--data", str(tmp_path / "d.npz"), "--out", str(weights / "base.safetensors"),
                        "--config", str(tmp_path / "m.json"), "--steps", "2", "--name", "tinyc", "--no-register"],
                 catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(read_metadata(weights / "base.safetensors")["training"])["held_out_images"] == names
    result = run(main, ["train-prior", "--weights", str(weights / "base.safetensors"), "--data", str(tmp_path / "d.npz"),
                        "--out", str(weights / "tinyc.safetensors"), "--config", str(tmp_path / "p.json")],
                 catch_exceptions=False)
    assert result.exit_code == 0, result.output
    record = json.loads(read_metadata(weights / "tinyc.safetensors")["prior_training"])
    assert len(record["log"][-1]["held_out_bits_per_stage_given_class"]) == 2
    monkeypatch.setenv("VQCODEC_WEIGHTS", str(weights))
    assert len(codec.generate(4, model="tinyc", label=2)) == 4
    assert len(codec.generate(4, model="tinyc")) == 4  # every class in turn
    guided = codec.generate(4, model="tinyc", guidance=3.0, seed=1)
    assert [p.size for p in guided] == [(16, 16)] * 4
    assert [np.asarray(p).tolist() for p in guided] == [np.asarray(p).tolist() for p in
                                                         codec.generate(4, model="tinyc", guidance=3.0, seed=1)]
    assert codec._sample_classes(3, 7, 0, None, "m").bincount().tolist() in ([3, 2, 2], [2, 3, 2], [2, 2, 3])
    with pytest.raises(ValueError, match="label must be an integer from 0 to 2"):
        codec.generate(1, model="tinyc", label=3)


@pytest.mark.parametrize("trainer", ["train", "train-prior", "train-enhance"])
def test_every_trainer_resumes_a_killed_run_to_the_same_weights(folder, trainer):
    """Killed during step 3 (the last checkpoint: step 2), rerun: the weights of an uninterrupted run."""
    from safetensors.torch import load_file
    from vqcodec import train_enhance, train_prior
    from vqcodec.config import EnhanceConfig, PriorTrainConfig
    from vqcodec.training.enhance_task import EnhanceTask
    from vqcodec.training.prior_task import PriorTask
    from vqcodec.training.vqvae_task import VQVAETask

    model_config, train_config = training.read_config_file(folder / "tiny.json")
    train_config = replace(train_config, steps=4)
    base = folder / "base.safetensors"
    if trainer != "train":
        training.train(folder / "data", base, model_config=model_config, train_config=replace(train_config, steps=1),
                       name="tiny", description="tiny", progress=False)

    def run(out):
        if trainer == "train":
            training.train(folder / "data", out, model_config=model_config, train_config=train_config,
                           name="tiny", description="tiny", progress=False)
        elif trainer == "train-prior":
            prior_config = PriorTrainConfig(**{**TINY_PRIOR["train"], "extra_scales": ()})
            train_prior.train_prior(base, folder / "data", out, prior_fields=TINY_PRIOR["prior"],
                                    train_config=prior_config, progress=False)
        else:
            train_enhance.train_enhance(base, folder / "data", out, train_config=train_config, progress=False,
                                        enhance_config=EnhanceConfig(**{**TINY_ENHANCE["enhance"], "widths": (8,)}))

    task = {"train": VQVAETask, "train-prior": PriorTask, "train-enhance": EnhanceTask}[trainer]
    run(folder / "a" / "x.safetensors")
    with killed_at_step(task, 3), pytest.raises(KeyboardInterrupt):
        run(folder / "b" / "x.safetensors")
    run(folder / "b" / "x.safetensors")
    straight, resumed = (load_file(str(folder / run / "x.safetensors")) for run in ("a", "b"))
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    key = {"train": "training", "train-prior": "prior_training", "train-enhance": "enhance_training"}[trainer]
    record = json.loads(read_metadata(folder / "b" / "x.safetensors")[key])
    assert record["steps"] == 4 and record["held_out_images"] == ["2.png"]


def test_a_checkpoint_of_the_old_trainers_is_refused(folder):
    model_config, train_config = training.read_config_file(folder / "tiny.json")
    (folder / "w").mkdir()
    torch.save({"model": {}, "step": 2, "elapsed": 1.0}, folder / "w" / "x.ckpt")
    with pytest.raises(ValueError, match="older vqcodec trainer"):
        training.train(folder / "data", folder / "w" / "x.safetensors", model_config=model_config,
                       train_config=train_config, name="x", description="x", progress=False)
