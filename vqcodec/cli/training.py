"""The training commands: train (every phase of a config), train-prior and train-enhance."""
from __future__ import annotations

from pathlib import Path

import click

from .batch import reports_errors


def _files_options(data: str, out: str, config: str, steps: str = "Training steps (overrides the config).",
                   several_data: bool = False, weights: str | None = None):
    """--data, --out, --config and --steps, with the command's own help for each (several_data:
    --data may be given more than once); with `weights`, first a required --weights with that help
    (the trained model a later phase builds on)."""
    options = [] if weights is None else [
        click.option("--weights", required=True, type=click.Path(exists=True, dir_okay=False, path_type=str),
                     help=weights)]
    options += [
        click.option("--data", "data_dir", required=True, type=click.Path(exists=True, path_type=str), help=data,
                     multiple=several_data),
        click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=str), help=out),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=str),
                     default=None, help=config),
        click.option("--steps", type=int, default=None, help=steps),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


_DATA_OF = "Training images, as for `vqcodec train` (use {} data: the same images are held out)."
_CONFIG_OF = 'JSON file {{"{section}": {{...}}, "train": {{...}}}} overriding the defaults of vqcodec.config.{configs}.'


def _out_path(out: str) -> Path:
    """OUT as a path, its folder created if missing."""
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    return out_path


def _registration_options(command):
    """--register/--no-register and --default-model, for the training commands."""
    command = click.option("--default-model", is_flag=True,
                           help="Mark the result as the default model in models.json.")(command)
    return click.option("--register/--no-register", default=True, show_default=True,
                        help="Add the result to models.json in OUT's folder, so `vqcodec models` lists it.")(command)


def _register(out_path: Path, default: bool) -> None:
    from .. import zoo

    entry = zoo.register(out_path, default=default)
    click.echo(f"wrote {out_path} (sha256 {entry.sha256})")


TRAIN_HELP = """Train a codec: every phase its config describes, in one command (also under
torchrun for several processes).

\b
The config's sections say what to train:
  model, train         a VQ-VAE (ModelConfig, TrainConfig in vqcodec.config),
                       written to OUT, with OUT's .ckpt and .log.jsonl beside it.
  model, train, prior  the same, then its prior; "prior" holds what a
                       `vqcodec train-prior` config holds ({"prior", "train"}).
                       Phase 1: the VQ-VAE, WORK/autoencoder.safetensors (and
                       .ckpt, .log.jsonl). Phase 2: VQ-VAE plus prior, OUT, as
                       `vqcodec train-prior --weights WORK/autoencoder.safetensors`
                       writes it; its checkpoint, log and grids in WORK/prior.*.
  model, autoencoder, priors[, rounds]
                       a hierarchical model (vqcodec.training.pipeline). Phase 1:
                       the autoencoder, WORK/autoencoder/. Phase 2: its level
                       priors, WORK/priors/. Then both as one file, OUT.
                       "rounds": a list of further rounds, each training the
                       autoencoder on and continuing its priors, in
                       WORK/round<n>/; a round gives only the keys it changes
                       (e.g. {"autoencoder": {"loop": {"steps": 3400}}}).

WORK is --work, by default OUT without its suffix plus .work (weights/x.safetensors:
weights/x.work/). Each phase shows its own progress bar. Rerunning the command after
a kill skips the finished phases and resumes the interrupted one from its checkpoint
(a phase starts over if the weights it starts from changed since it began). OUT is registered
at the end (see --no-register)."""


@click.command(help=TRAIN_HELP)
@_files_options(data="Training images: a folder (searched recursively; PNG, JPEG, WebP, ...), or a .npz "
                     "file with an 'images' uint8 array (N,H,W[,3]) such as mnist5k.npz (and a 'labels' "
                     "array for a class-conditional prior). The last images (by name, or in the array) are "
                     "held out for the periodic check. Repeat --data to train a hierarchical pipeline "
                     "config on several folders (the last images of each are held out).",
                out="Weights file to write, e.g. weights/NAME.safetensors: the finished model.",
                config='JSON file of the phases to train (see above); keys left out keep the defaults. '
                       'Default: a VQ-VAE with the defaults of ModelConfig and TrainConfig.',
                steps="Training steps of every phase (overrides the config).",
                several_data=True)
@click.option("--work", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Folder for the intermediate files of a config with several phases. "
                   "Default: OUT without its suffix, plus .work.")
@click.option("--batch-size", type=int, default=None, help="Crops per step of the VQ-VAE (overrides the config).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where to train: a VQ-VAE (its prior trains on the CPU), or every phase of a hierarchical "
                   "pipeline config.")
@click.option("--resume", type=click.Path(exists=True, dir_okay=False, path_type=str), default=None,
              help="Checkpoint to resume the VQ-VAE from. Default: its own checkpoint if it exists.")
@click.option("--init-from", type=click.Path(exists=True, dir_okay=False, path_type=str), default=None,
              help="Warm start the VQ-VAE from an earlier model's weights (.safetensors); tensors of another "
                   "shape, such as a wider latent, get the overlapping part. A hierarchical config's autoencoder "
                   "starts from a hierarchical model's weights, or from a VQ-VAE's as its stride-8 level. "
                   "Ignored when resuming.")
@click.option("--name", default=None, help="Model name stored in the weights. Default: OUT's file stem.")
@click.option("--description", default=None,
              help="One-line description stored in the weights. Default: 'VQ-VAE image codec', or "
                   "'hierarchical ECVQ image codec' for a hierarchical config.")
@_registration_options
@reports_errors
def train(data_dir, out, config_file, steps, work, batch_size, device, resume, init_from, name, description,
          register, default_model):
    from dataclasses import replace

    from .. import train as training

    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise click.UsageError("--device cuda: this torch sees no CUDA device (a CPU-only build, or no GPU "
                                   "or driver); train with --device cpu")
    kind = training.config_kind(config_file)
    out_path = _out_path(out)
    name = name or out_path.stem
    if kind == "pipeline":
        for option, value in (("--batch-size", batch_size), ("--resume", resume)):
            if value is not None:
                raise click.UsageError(f"{option} is not for a hierarchical pipeline config (its sections "
                                       "set the batch sizes, and each phase resumes from its own checkpoint)")
        from ..training.pipeline import train_pipeline

        train_pipeline(config_file, list(data_dir), out_path, name=name,
                       description=description or "hierarchical ECVQ image codec", work=work, steps=steps,
                       init_from=init_from, device=device)
    else:
        if len(data_dir) != 1:
            raise click.UsageError("several --data are for a hierarchical pipeline config; a VQ-VAE trains on "
                                   "one folder or .npz file")
        model_config, train_config, prior = training.read_phases(config_file)
        if prior is None and work is not None:
            raise click.UsageError("--work is for a config with several phases (one with a 'prior' section, "
                                   "or a hierarchical pipeline)")
        overrides = {k: v for k, v in {"steps": steps, "batch_size": batch_size}.items() if v is not None}
        train_config = replace(train_config, **overrides)
        settings = dict(model_config=model_config, train_config=train_config, name=name,
                        description=description or "VQ-VAE image codec", device_name=device, resume=resume,
                        init_from=init_from)
        if prior is None:
            training.train(data_dir[0], out_path, **settings)
        else:
            if steps is not None:
                prior = (prior[0], replace(prior[1], steps=steps))
            training.train_with_prior(data_dir[0], out_path, prior=prior, work=work, **settings)
    if register and training.is_main_process():
        _register(out_path, default_model)


@click.command("train-prior")
@_files_options(weights="Weights of the trained VQ-VAE whose index grids the prior learns. A prior already in "
                        "the file is replaced, or, with rate_tradeoff > 0 in the config's train section, refined: "
                        "training continues from it on the indices the rate-aware encoder makes with it.",
                data=_DATA_OF.format("the VQ-VAE's"),
                out="Weights file to write: the VQ-VAE plus the prior, under one sha256. May equal --weights. "
                    "A resumable checkpoint goes next to it as NAME.prior.ckpt, the index grids as NAME.grids.pt.",
                config=_CONFIG_OF.format(section="prior", configs="PriorConfig and PriorTrainConfig"))
@click.option("--layer", type=click.Choice(["base", "enhance"]), default="base", show_default=True,
              help="Whose index grids the prior learns: the base model's, or those of the enhancement "
                   "layer in --weights (see train-enhance), which code the quality levels above the base's.")
@_registration_options
@reports_errors
def train_prior(weights, data_dir, out, config_file, steps, layer, register, default_model):
    """Train the learned prior (entropy model and sampler) of a trained VQ-VAE, or of its
    enhancement layer."""
    from dataclasses import replace

    from .. import train_prior as training

    prior_fields, train_config = training.read_prior_config_file(config_file)
    if steps is not None:
        train_config = replace(train_config, steps=steps)
    out_path = _out_path(out)
    if layer == "enhance":
        from ..train_enhance import train_enhance_prior as train
    else:
        train = training.train_prior
    train(weights, data_dir, out_path, prior_fields=prior_fields, train_config=train_config)
    if register:
        _register(out_path, default_model)


@click.command("train-enhance")
@_files_options(weights="Weights of the trained base model (with its prior, if any). The layer learns what the "
                        "base model's top level, encoded as the codec encodes it, leaves out. An enhancement "
                        "layer already in the file is replaced.",
                data=_DATA_OF.format("the base model's"),
                out="Weights file to write: base model, prior and enhancement layer, under one sha256. May equal "
                    "--weights. A resumable checkpoint goes next to it as NAME.enhance.ckpt, the base "
                    "reconstructions as NAME.pairs.pt.",
                config=_CONFIG_OF.format(section="enhance", configs="EnhanceConfig and TrainConfig"))
@click.option("--description", default=None,
              help="One-line description stored in the weights (for `vqcodec models`). Default: the base model's.")
@_registration_options
@reports_errors
def train_enhance(weights, data_dir, out, config_file, steps, description, register, default_model):
    """Train the enhancement layer: the quality levels above the base model's top level."""
    from dataclasses import replace

    from .. import train_enhance as training

    enhance_config, train_config = training.read_enhance_config_file(config_file)
    if steps is not None:
        train_config = replace(train_config, steps=steps)
    out_path = _out_path(out)
    training.train_enhance(weights, data_dir, out_path, enhance_config=enhance_config, train_config=train_config,
                           description=description)
    if register:
        _register(out_path, default_model)
