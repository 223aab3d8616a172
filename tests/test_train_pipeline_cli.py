"""`vqcodec train` runs every phase its config describes: the VQ-VAE and then its prior (a
config with a "prior" section), or the hierarchical pipeline; finished phases are skipped and
an interrupted one resumes. Tiny configs, as in test_train.py."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

from conftest import killed_at_step

from vqcodec import train as training
from vqcodec.cli import main
from vqcodec.training.prior_task import PriorTask
from vqcodec.training.vqvae_task import VQVAETask
from vqcodec.weights_io import read_metadata

VQVAE = {"model": {"widths": [8, 8], "res_blocks": 1, "latent_dim": 4, "codebook_size": 16, "num_stages": 2},
         "train": {"steps": 4, "batch_size": 2, "crop_size": 32, "warmup_steps": 1, "checkpoint_every": 2,
                   "eval_every": 2, "held_out_images": 1, "extra_scales": [0.5], "threads": 1}}
PRIOR = {"prior": {"channels": 8}, "train": {"steps": 4, "batch_size": 2, "crop_size": 4, "held_out_images": 1,
                                             "extra_scales": [], "eval_every": 2, "checkpoint_every": 2,
                                             "threads": 1}}


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        noise = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(noise).resize((80, 60), Image.BILINEAR).save(data / f"{i}.png")
    (tmp_path / "both.json").write_text(json.dumps({**VQVAE, "prior": PRIOR}))
    return tmp_path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def train_both(folder, out, *extra):
    return invoke("train", "--data", folder / "data", "--out", out, "--config", folder / "both.json", *extra)


def same_tensors(a, b):
    a, b = load_file(str(a)), load_file(str(b))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_one_command_trains_the_vqvae_then_its_prior_as_the_two_commands_do(folder, monkeypatch):
    import vqcodec
    from vqcodec import codec

    out = folder / "one" / "tiny.safetensors"
    result = train_both(folder, out)
    assert result.exit_code == 0, result.output
    work = folder / "one" / "tiny.work"
    assert {p.name for p in work.iterdir()} >= {"autoencoder.safetensors", "autoencoder.ckpt", "prior.ckpt",
                                                "prior.grids.pt", "prior.source"}
    meta = read_metadata(out)
    assert meta["name"] == "tiny" and json.loads(meta["prior_training"])["steps"] == 4
    assert json.loads(meta["training"])["steps"] == 4
    assert json.loads((folder / "one" / "models.json").read_text())["models"][0]["name"] == "tiny"

    # the two commands of before, the VQ-VAE's config without its "prior" section
    (folder / "vqvae.json").write_text(json.dumps(VQVAE))
    (folder / "prior.json").write_text(json.dumps(PRIOR))
    base, final = folder / "two" / "base.safetensors", folder / "two" / "tiny.safetensors"
    assert invoke("train", "--data", folder / "data", "--out", base, "--config", folder / "vqvae.json",
                  "--name", "tiny", "--no-register").exit_code == 0
    assert invoke("train-prior", "--weights", base, "--data", folder / "data", "--out", final,
                  "--config", folder / "prior.json").exit_code == 0
    same_tensors(out, final)
    assert json.loads(read_metadata(final)["prior_config"]) == json.loads(meta["prior_config"])

    monkeypatch.setenv("VQCODEC_WEIGHTS", str(folder / "one"))
    pixels = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    assert vqcodec.decode(vqcodec.encode(pixels, model="tiny", coder="prior", quality=2)).size == (20, 12)
    assert len(codec.generate(2, model="tiny", seed=0)) == 2


def test_a_kill_in_phase_2_resumes_there_and_phase_1_is_skipped(folder, monkeypatch):
    straight = folder / "a" / "tiny.safetensors"
    assert train_both(folder, straight, "--no-register").exit_code == 0

    out = folder / "b" / "tiny.safetensors"
    with killed_at_step(PriorTask, 3):
        assert train_both(folder, out, "--no-register").exit_code == 1  # click: "Aborted!"
    assert not out.exists() and (folder / "b" / "tiny.work" / "prior.ckpt").exists()

    def not_again(self, step, generator):
        raise AssertionError("phase 1 is done: it must not train again")
    monkeypatch.setattr(VQVAETask, "batch_loss", not_again)
    result = train_both(folder, out, "--no-register")
    assert result.exit_code == 0, result.output
    assert "phase 1/2: autoencoder: done, skipped" in result.output
    same_tensors(straight, out)
    record = json.loads(read_metadata(out)["prior_training"])
    assert [entry["step"] for entry in record["log"]] == [2, 4]  # resumed at step 2, not started over

    result = train_both(folder, out, "--no-register")  # everything done: both phases skipped
    assert result.exit_code == 0 and "phase 2/2: prior: done, skipped" in result.output


def test_phase_1_interrupted_resumes_and_phase_2_starts_over_on_the_new_weights(folder):
    """A run cut short in phase 1 (here: all of it with fewer steps), then the full command:
    phase 1 resumes from its checkpoint, phase 2 is redone on the finished VQ-VAE."""
    straight = folder / "a" / "tiny.safetensors"
    assert train_both(folder, straight, "--no-register").exit_code == 0
    out = folder / "b" / "tiny.safetensors"
    assert train_both(folder, out, "--no-register", "--steps", "2").exit_code == 0
    assert json.loads(read_metadata(out)["training"])["steps"] == 2
    result = train_both(folder, out, "--no-register")
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (folder / "b" / "tiny.work" / "autoencoder.log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [2, 4]  # resumed at step 2
    assert json.loads(read_metadata(out)["training"])["steps"] == 4
    same_tensors(straight, out)


def test_work_folder_option_and_config_errors(folder):
    out = folder / "w" / "tiny.safetensors"
    work = folder / "elsewhere"
    result = train_both(folder, out, "--no-register", "--work", work, "--steps", "1")
    assert result.exit_code == 0, result.output
    assert (work / "autoencoder.safetensors").exists() and not (folder / "w" / "tiny.work").exists()

    def run(config, *extra):
        (folder / "bad.json").write_text(json.dumps(config))
        return CliRunner().invoke(main, ["train", "--data", str(folder / "data"), "--out", str(out),
                                         "--config", str(folder / "bad.json"), *extra])
    for config, message in (({"model": {}, "train": {}, "priors": {}}, "fit no trainer"),
                            ({"model": {}, "autoencoder": {}, "train": {}}, "fit no trainer"),
                            ({"model": {}, "prior": {"prior": {}, "trian": {}}}, "section 'prior'"),
                            ({"model": {}, "prior": {"prior": {"chanels": 8}}}, "chanels"),
                            ({"prior": {**PRIOR, "train": {**PRIOR["train"], "rate_tradeoff": 0.1}}},
                             "cannot refine"),
                            ([1, 2], "JSON object")):
        result = run(config)
        assert result.exit_code == 1, (config, result.output)
        assert message in result.output and "Traceback" not in result.output, result.output
    result = run(VQVAE, "--work", str(work))  # one phase: nothing intermediate
    assert result.exit_code == 2 and "--work" in result.output
    result = run({**VQVAE, "prior": PRIOR}, "--data", str(folder / "data"))
    assert result.exit_code == 2 and "several --data" in result.output
    (folder / "bad.json").write_text("{")
    result = CliRunner().invoke(main, ["train", "--data", str(folder / "data"), "--out", str(out),
                                       "--config", str(folder / "bad.json")])
    assert result.exit_code == 1 and "not valid JSON" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine whose torch sees no CUDA device")
def test_device_cuda_without_a_cuda_device_is_a_clear_error(folder):
    out = folder / "m.safetensors"
    result = CliRunner().invoke(main, ["train", "--data", str(folder / "data"), "--out", str(out),
                                       "--config", str(folder / "both.json"), "--device", "cuda"])
    assert result.exit_code == 2 and "no CUDA device" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_config_kind():
    assert training.config_kind(None) == "vqvae"
    assert training.config_kind("configs/digits.json") == "vqvae"
    assert training.config_kind("configs/photo2.json") == "pipeline"
    model_config, train_config, prior = training.read_phases("configs/digits.json")
    assert prior is not None and prior[0]["num_classes"] == 10 and prior[1].steps == 8000


PIPELINE = {"model": {"widths": [8, 8, 8, 8], "res_blocks": 1, "level_dims": [4, 2, 2], "level_stages": [2, 1, 1],
                      "codebook_size": 16, "entropy_channels": 8},
            "autoencoder": {"loop": {"steps": 2, "warmup_steps": 1, "checkpoint_every": 2, "eval_every": 2,
                                     "threads": 1, "bf16": False},
                            "data": {"batch_size": 2, "crop_size": 32, "held_out_per_folder": 1,
                                     "extra_scales": []}},
            "priors": {"prior": {"channels": 8, "layers": 2, "schedule": "grouped"},
                       "loop": {"steps": 2, "warmup_steps": 1, "checkpoint_every": 2, "eval_every": 2,
                                "threads": 1, "bf16": False},
                       "data": {"batch_size": 2, "crop_size": 32, "held_out_per_folder": 1, "extra_scales": []}}}


def test_a_hierarchical_config_trains_both_phases_from_several_folders(folder):
    rng = np.random.default_rng(1)
    (folder / "more").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "more" / f"{i}.png")
    (folder / "h.json").write_text(json.dumps(PIPELINE))
    out = folder / "h" / "tinyh.safetensors"
    result = invoke("train", "--data", folder / "data", "--data", folder / "more", "--out", out,
                    "--config", folder / "h.json")
    assert result.exit_code == 0, result.output
    work = folder / "h" / "tinyh.work"
    assert (work / "autoencoder" / "checkpoint.pt").exists() and (work / "priors" / "checkpoint.pt").exists()
    meta = read_metadata(out)
    assert meta["name"] == "tinyh" and meta["description"] == "hierarchical ECVQ image codec"
    assert json.loads((folder / "h" / "models.json").read_text())["models"][0]["name"] == "tinyh"
    training_record = json.loads(meta["training"])
    assert training_record["autoencoder"]["held_out_images"] == ["data/2.png", "more/2.png"]
    result = CliRunner().invoke(main, ["train", "--data", str(folder / "data"), "--out", str(out), "--config",
                                       str(folder / "h.json"), "--batch-size", "4"])
    assert result.exit_code == 2 and "--batch-size is not for a hierarchical" in result.output
    # encoder settings chosen after training: the same command assembles them without retraining
    ladder = [[1, 1.0], [2, 0.5], [2, 1.0], [3, 1.0], [4, 1.0]]
    settings = {"quality_ladder": ladder, "activity_exponent": 0.75, "activity_reference": 400.0}
    (folder / "h.json").write_text(json.dumps({**PIPELINE, "model": {**PIPELINE["model"], **settings}}))
    trained = {name: (work / name / "weights.safetensors").read_bytes() for name in ("autoencoder", "priors")}
    result = invoke("train", "--data", folder / "data", "--data", folder / "more", "--out", out,
                    "--config", folder / "h.json")
    assert result.exit_code == 0, result.output
    assert all((work / name / "weights.safetensors").read_bytes() == data for name, data in trained.items())
    assembled = json.loads(read_metadata(out)["hierarchy_config"])
    assert {key: assembled[key] for key in settings} == settings


def test_a_hierarchical_config_starts_from_a_model_given_by_init_from(folder):
    (folder / "h.json").write_text(json.dumps(PIPELINE))
    first = folder / "h" / "first.safetensors"
    assert invoke("train", "--data", folder / "data", "--out", first, "--config", folder / "h.json").exit_code == 0
    second = folder / "h" / "second.safetensors"
    result = invoke("train", "--data", folder / "data", "--out", second, "--config", folder / "h.json",
                    "--init-from", first, "--steps", "1")
    assert result.exit_code == 0, result.output
    before, after = load_file(str(first)), load_file(str(second))
    key = "hierarchy.analysis.4.0.weight"
    step = (after[key] - before[key]).abs().max()
    assert 0 < step < 0.01  # one small step away from the first model, not a fresh start
    (folder / "vq.json").write_text(json.dumps(VQVAE))  # a stride-4 VQ-VAE cannot be the stride-8 level
    vqvae = folder / "v" / "v.safetensors"
    assert invoke("train", "--data", folder / "data", "--out", vqvae, "--config", folder / "vq.json").exit_code == 0
    result = CliRunner().invoke(main, ["train", "--data", str(folder / "data"), "--out", str(folder / "h" / "x.safetensors"),
                                       "--config", str(folder / "h.json"), "--init-from", str(vqvae)])
    assert result.exit_code == 1 and "maps onto" in result.output and not (folder / "h" / "x.safetensors").exists()


def test_rounds_continue_the_autoencoder_and_its_priors_and_a_kill_resumes_in_the_round_it_hit(folder):
    """A config's later rounds train on from the round before: the autoencoder with what the
    round changes (here a higher lambda_high, which later rounds keep, and a run cut short on an
    8-step schedule), the priors continued from the last ones trained (round 1 trains none).
    After a kill in round 1, rerunning the command leaves round 0 alone and resumes round 1
    from its checkpoint, to the same model as an uninterrupted run."""
    from vqcodec.training.hierarchy_task import HierarchyTask

    config = {**PIPELINE, "rounds": [
        {"model": {"lambda_high": 0.1}, "autoencoder": {"loop": {"steps": 8, "stop_at": 4}},
         "priors": {"loop": {"steps": 0}}},
        {"autoencoder": {"loop": {"steps": 2, "stop_at": 0}}, "priors": {"loop": {"steps": 2}}}]}
    (folder / "r.json").write_text(json.dumps(config))

    def train_rounds(out):
        return invoke("train", "--data", folder / "data", "--out", out, "--config", folder / "r.json", "--no-register")
    straight = folder / "a" / "tiny.safetensors"
    result = train_rounds(straight)
    assert result.exit_code == 0, result.output
    assert "phase 4/5: autoencoder (round 2)" in result.output
    work = folder / "a" / "tiny.work"
    assert not (work / "round1" / "priors").exists()
    first, second = (load_file(str(work / part / "autoencoder" / "weights.safetensors")) for part in (".", "round1"))
    key = "analysis.4.0.weight"
    assert 0 < (second[key] - first[key]).abs().max() < 0.01  # trained on, not started afresh
    first, last = (load_file(str(work / part / "priors" / "weights.safetensors")) for part in (".", "round2"))
    assert (first["prior0.conv0_weight"] == last["prior0.conv0_weight"]).float().mean() > 0.5  # continued
    meta = read_metadata(straight)
    assert json.loads(meta["hierarchy_config"])["lambda_high"] == 0.1
    training_record = json.loads(meta["training"])
    assert [r["autoencoder"]["steps"] for r in training_record["earlier_rounds"]] == [2, 4]
    assert "priors" not in training_record["earlier_rounds"][1]

    out = folder / "b" / "tiny.safetensors"
    with killed_at_step(HierarchyTask, 3):  # round 0 has 2 steps: the kill hits round 1
        assert train_rounds(out).exit_code == 1
    assert not out.exists()
    checkpoint = folder / "b" / "tiny.work" / "round1" / "autoencoder" / "checkpoint.pt"
    assert torch.load(checkpoint, weights_only=False)["state"]["step"] == 2  # where round 1 resumes
    round0 = [folder / "b" / "tiny.work" / phase / "checkpoint.pt" for phase in ("autoencoder", "priors")]
    written = [path.stat().st_mtime_ns for path in round0]
    result = train_rounds(out)
    assert result.exit_code == 0, result.output
    assert [path.stat().st_mtime_ns for path in round0] == written  # round 0 done: not trained again
    same_tensors(straight, out)

    for rounds, message in (([{"prior": {}}], "round 1: unknown sections ['prior']"),
                            ([{"priors": {"loop": {"steps": 0}}}], "the last round must train priors")):
        (folder / "r.json").write_text(json.dumps({**PIPELINE, "rounds": rounds}))
        result = CliRunner().invoke(main, ["train", "--data", str(folder / "data"), "--out", str(out),
                                           "--config", str(folder / "r.json")])
        assert result.exit_code == 1 and message in result.output, result.output


def test_a_round_can_refit_the_priors_alone_on_the_codec_grids(folder):
    """A later round whose autoencoder loop has 0 steps keeps the autoencoder as it was, and a
    priors phase with codec_grids trains on the grids the codec writes with that round's quality
    ladder (evaluated per quality level), continued from the priors before."""
    ladder = [[1, 1.0], [2, 1.0], [4, 1.0]]
    config = {**PIPELINE, "rounds": [
        {"model": {"quality_ladder": ladder}, "autoencoder": {"loop": {"steps": 0}},
         "priors": {"loop": {"steps": 2}, "data": {"codec_grids": True}}}]}
    (folder / "c.json").write_text(json.dumps(config))
    out = folder / "c" / "tiny.safetensors"
    result = invoke("train", "--data", folder / "data", "--out", out, "--config", folder / "c.json", "--no-register")
    assert result.exit_code == 0, result.output
    assert "phase 3/3: priors (round 1)" in result.output
    work = folder / "c" / "tiny.work"
    assert not (work / "round1" / "autoencoder").exists()
    evaluations = [json.loads(line) for line in (work / "round1" / "priors" / "log.jsonl").read_text().splitlines()
                   if "codec_bpp" in line]
    assert evaluations and len(evaluations[-1]["codec_bpp"]) == len(ladder)
    phases = (work / "priors" / "weights.safetensors", work / "round1" / "priors" / "weights.safetensors", out)
    first, refit, shipped = (load_file(str(path)) for path in phases)
    assert any(not torch.equal(first[k], refit[k]) for k in first)  # trained on
    autoencoder = load_file(str(work / "autoencoder" / "weights.safetensors"))
    kept = [(shipped[f"hierarchy.{k}"], v) for k, v in autoencoder.items() if f"hierarchy.{k}" in shipped]
    assert len(kept) > 10 and all(torch.equal(a, b) for a, b in kept)  # the autoencoder as it was
    assert json.loads(read_metadata(out)["hierarchy_config"])["quality_ladder"] == ladder
    (folder / "c.json").write_text(json.dumps({**PIPELINE, "autoencoder": {"loop": {"steps": 0}}}))
    result = CliRunner().invoke(main, ["train", "--data", str(folder / "data"), "--out", str(out), "--config",
                                       str(folder / "c.json")])
    assert result.exit_code == 1 and "the first round must train the autoencoder" in result.output
