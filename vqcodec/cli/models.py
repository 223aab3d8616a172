"""The commands about the bundled models: models (list them) and generate (sample from a prior)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from .batch import Failure, reports_errors


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@reports_errors
def models(as_json):
    """List the bundled models: name, sha256, quality levels, coders, default, description."""
    from .. import zoo

    listed = zoo.list_models()
    if as_json:
        click.echo(json.dumps(listed, indent=2))
        return
    for m in listed:
        mark = " (default)" if m["default"] else ""
        click.echo(f"{m['name']}{mark}: {m['description']}\n  quality levels {m['quality_levels'][0]}.."
                   f"{m['quality_levels'][-1]} (default {m['default_quality']}"
                   + (f"; {m['enhancement_levels'][0]}..{m['enhancement_levels'][-1]} add the enhancement layer"
                      if m["enhancement_levels"] else "")
                   + f"), coders {', '.join(m['coders'])}, sha256 {m['sha256']}")


def _parse_size(ctx, param, value: str | None):
    if value is None:
        return None
    try:
        height, width = (int(part) for part in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected HEIGHTxWIDTH in pixels, such as 256x256; got {value!r}") from None
    if height < 1 or width < 1:
        raise click.BadParameter(f"height and width must be positive, got {value!r}")
    return height, width


@click.command()
@click.option("-n", "--count", type=click.IntRange(min=1, max=1024), default=16, show_default=True,
              help="Number of images to sample.")
@click.option("--model", "model_name", default=None,
              help="Bundled model to sample from (see `vqcodec models`), e.g. digits. Default: the default model.")
@click.option("--size", metavar="HxW", callback=_parse_size, default=None,
              help="Image size in pixels, height x width, rounded up to a multiple of the model's stride "
                   "(8 for photo, 4 for digits). Default: the model's training image size (28x28 for "
                   "digits), else 256x256.")
@click.option("-t", "--temperature", type=click.FloatRange(min=0, max=100), default=None,
              help="Sharpens (<1) or flattens (>1) the prior's distributions; 0 always takes the most "
                   "likely index. Default: the model's own (see `vqcodec models --json`; 0.4 for digits).")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Sample only among the K most likely indices at each position. Default: all.")
@click.option("-q", "--quality", type=int, default=None,
              help="Residual stages to sample (1..N). Default: all of them.")
@click.option("--label", type=click.IntRange(min=0), default=None,
              help="For a model whose prior is class-conditional (digits: the digit 0-9), sample only this "
                   "class. Default: every class equally often.")
@click.option("-g", "--guidance", type=click.FloatRange(min=0, max=100), default=None,
              help="Classifier-free guidance for a class-conditional model: how much more each class is made "
                   "to look like itself than like the other classes (0 = none). Default: the model's own "
                   "(see `vqcodec models --json`).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed: the same seed gives the same images.")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=str), default="samples",
              show_default=True, help="Folder for sample_NN.png and grid.png (created if missing).")
@click.option("-f", "--force", is_flag=True, help="Overwrite sample files that already exist.")
@reports_errors
def generate(count, model_name, size, temperature, top_k, quality, label, guidance, seed, output_dir, force):
    """Sample new images from a model's learned prior (one PNG each, plus grid.png)."""
    from .. import codec, images
    from ..fileio import atomic_write_bytes

    folder = Path(output_dir)
    names = [f"sample_{i:0{len(str(count - 1))}d}.png" for i in range(count)] + ["grid.png"]
    existing = [name for name in names if (folder / name).exists()]
    if existing and not force:
        raise Failure(f"{folder / existing[0]} exists (use --force to overwrite)")
    pictures = codec.generate(count, model=model_name, size=size, temperature=temperature, top_k=top_k,
                              seed=seed, quality=quality, label=label, guidance=guidance)
    folder.mkdir(parents=True, exist_ok=True)
    for name, picture in zip(names, pictures + [images.tile(pictures)]):
        atomic_write_bytes(folder / name, images.encode_image_bytes(picture, "PNG"), overwrite=True)
    click.echo(f"wrote {count} samples of {pictures[0].width}x{pictures[0].height} and grid.png to {folder}")
