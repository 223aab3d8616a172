"""Command line: parses options, calls codec / zoo / train, reports errors in one line.

Exit codes: 0 success; 1 the work failed (unreadable input, corrupt .vqz, missing model,
output exists without --force, I/O error); 2 bad usage (unknown option, bad value).
"""
from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import click

from . import __version__

EXIT_FAILURE = 1


class Failure(click.ClickException):
    exit_code = EXIT_FAILURE

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def reports_errors(command):
    """Turn the library's expected errors into a one-line message and exit code 1."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except FileExistsError as error:
            raise Failure(str(error)) from None
        except OSError as error:
            where = f" {error.filename}" if error.filename else ""
            raise Failure(f"{error.strerror or error}:{where}") from None
        except (ValueError, MemoryError) as error:  # VqzError, ModelError, ImageInputError are ValueErrors
            raise Failure(str(error) or type(error).__name__) from None
    return wrapper


def _output_path(input_path: Path, output: str | None, suffix: str) -> Path:
    path = Path(output) if output else input_path.with_suffix(suffix)
    if path.exists() and path.is_dir():
        raise Failure(f"output {path} is a directory")
    try:
        same = path.exists() and path.resolve() == input_path.resolve()
    except OSError:
        same = False
    if same:
        raise Failure(f"output {path} is the input file; choose another output")
    return path


def _write(path: Path, data: bytes, force: bool) -> None:
    from .fileio import atomic_write_bytes

    if path.exists() and not force:
        raise Failure(f"{path} already exists (use --force to overwrite)")
    try:
        atomic_write_bytes(path, data, overwrite=force)
    except FileExistsError:
        raise Failure(f"{path} already exists (use --force to overwrite)") from None
    except OSError as error:
        raise Failure(f"cannot write {path}: {error.strerror or error}") from None


def _read_input(path: str) -> tuple[Path, bytes]:
    p = Path(path)
    if p.is_dir():
        raise Failure(f"{p} is a directory, not a file")
    if not p.exists():
        raise Failure(f"no such file: {p}")
    return p, p.read_bytes()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="vqcodec")
def main() -> None:
    """vqcodec: a lossy image codec built on a trained VQ-VAE.

    An image is mapped to grids of codebook indices by a trained VQ-VAE, the indices
    are entropy-coded, and the result is stored in a .vqz file that names the exact
    model (by sha256) needed to decode it."""


@main.command()
@click.argument("input", type=click.Path(dir_okay=True, path_type=str))
@click.option("-o", "--output", type=click.Path(path_type=str), default=None,
              help="Where to write the .vqz file. Default: INPUT with the suffix .vqz.")
@click.option("-q", "--quality", type=int, default=None,
              help="Quality level, 1 (smallest file) to the model's maximum (best picture); "
                   "see `vqcodec models`. Default: the model's default level.")
@click.option("--model", "model_name", default=None,
              help="Bundled model to use (see `vqcodec models`). Default: the default model.")
@click.option("--coder", type=click.Choice(["zstd"]), default="zstd", show_default=True,
              help="Entropy coder for the index grids.")
@click.option("-f", "--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("-v", "--verbose", is_flag=True, help="Print size, bits per pixel and time.")
@reports_errors
def encode(input, output, quality, model_name, coder, force, verbose):
    """Compress an image file (PNG, JPEG, WebP, TIFF, BMP, ...) to a .vqz file.

    Any size from 1x1 up. Gray images stay gray, alpha is kept losslessly,
    palette/CMYK/16-bit images are converted to 8-bit RGB(A) or gray first,
    and EXIF orientation is applied."""
    from . import codec

    input_path, data = _read_input(input)
    out = _output_path(input_path, output, ".vqz")
    if out.exists() and not force:
        raise Failure(f"{out} already exists (use --force to overwrite)")
    started = time.perf_counter()
    result = codec.encode_image(data, quality=quality, model=model_name, coder=coder)
    _write(out, result.data, force)
    if verbose:
        h = result.header
        click.echo(f"{out}: {h.width}x{h.height} {h.mode}, model {h.model_name} q{h.quality}, "
                   f"{len(result.data)} bytes, {result.bpp:.4f} bpp, {time.perf_counter() - started:.2f} s")


@main.command()
@click.argument("input", type=click.Path(path_type=str))
@click.option("-o", "--output", type=click.Path(path_type=str), default=None,
              help="Where to write the image; its suffix picks the format (.png, .jpg, .webp, "
                   ".tif, .bmp, ...). Default: INPUT with the suffix .png.")
@click.option("-f", "--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("-v", "--verbose", is_flag=True, help="Print the size, mode and time.")
@reports_errors
def decode(input, output, force, verbose):
    """Rebuild an image from a .vqz file."""
    from . import codec, images

    input_path, data = _read_input(input)
    out = _output_path(input_path, output, ".png")
    if out.exists() and not force:
        raise Failure(f"{out} already exists (use --force to overwrite)")
    started = time.perf_counter()
    picture = codec.decode(data)
    encoded = images.encode_image_bytes(picture, images.format_for_path(out))
    _write(out, encoded, force)
    if verbose:
        click.echo(f"{out}: {picture.width}x{picture.height} {picture.mode}, "
                   f"{time.perf_counter() - started:.2f} s")


@main.command()
@click.argument("input", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the fields as one JSON object.")
@reports_errors
def info(input, as_json):
    """Show every header field of a .vqz file, its sizes and bits per pixel."""
    from . import codec

    _, data = _read_input(input)
    fields = codec.describe(data)
    if as_json:
        click.echo(json.dumps(fields, indent=2))
        return
    for key, value in fields.items():
        if key == "grid_shapes":
            value = ", ".join(f"{r}x{c}" for r, c in value)
        elif key == "bpp":
            value = f"{value:.4f}"
        click.echo(f"{key:20s} {value}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@reports_errors
def models(as_json):
    """List the bundled models: name, sha256, quality levels, default, description."""
    from . import zoo

    listed = zoo.list_models()
    if as_json:
        click.echo(json.dumps(listed, indent=2))
        return
    for m in listed:
        mark = " (default)" if m["default"] else ""
        click.echo(f"{m['name']}{mark}: {m['description']}\n  quality levels {m['quality_levels'][0]}.."
                   f"{m['quality_levels'][-1]} (default {m['default_quality']}), sha256 {m['sha256']}")


@main.command()
@click.argument("input", required=False, type=click.Path(path_type=str))
@click.option("--model", "model_name", default=None, help="Bundled model to use. Default: the default model.")
@click.option("-q", "--quality", "qualities", type=int, multiple=True,
              help="Quality level(s) to try; repeat the option for several. Default: every level.")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Also write each decoded image here as PNG (created if missing).")
@reports_errors
def demo(input, model_name, qualities, output_dir):
    """Encode and decode an image (default: the sample shipped with vqcodec) at each
    quality level and print bytes, bits per pixel, PSNR and seconds."""
    from . import codec, images, zoo

    source = Path(input) if input else images.sample_image_path()
    if input:
        _read_input(input)
    original = images.load_image(source)
    entry = zoo.find(model_name)
    levels = qualities or tuple(entry.info()["quality_levels"])
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    click.echo(f"{source} ({original.width}x{original.height} {original.mode}), model {entry.name}")
    click.echo(f"{'quality':>7} {'bytes':>8} {'bpp':>7} {'PSNR dB':>8} {'encode s':>9} {'decode s':>9}")
    for level in levels:
        t0 = time.perf_counter()
        result = codec.encode_image(original, quality=level, model=entry.name)
        t1 = time.perf_counter()
        decoded = codec.decode(result.data)
        t2 = time.perf_counter()
        quality_db = images.psnr(*(images.split_alpha(im)[0] for im in (original, decoded)))
        click.echo(f"{level:>7} {len(result.data):>8} {result.bpp:>7.4f} {quality_db:>8.2f} "
                   f"{t1 - t0:>9.3f} {t2 - t1:>9.3f}")
        if output_dir:
            decoded.save(Path(output_dir) / f"{source.stem}_q{level}.png")


@main.command()
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=str),
              help="Folder of training images (searched recursively; PNG, JPEG, WebP, ...). "
                   "The last images by name are held out for the periodic check.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Weights file to write, e.g. weights/NAME.safetensors. A resumable checkpoint "
                   "goes next to it as NAME.ckpt and a log as NAME.log.jsonl.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=str),
              default=None, help='JSON file {"model": {...}, "train": {...}} overriding the defaults '
                                 "of vqcodec.config.ModelConfig and TrainConfig.")
@click.option("--steps", type=int, default=None, help="Training steps (overrides the config).")
@click.option("--batch-size", type=int, default=None, help="Crops per step (overrides the config).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where to train.")
@click.option("--resume", type=click.Path(exists=True, dir_okay=False, path_type=str), default=None,
              help="Checkpoint to resume from. Default: OUT's .ckpt if it exists.")
@click.option("--name", default=None, help="Model name stored in the weights. Default: OUT's file stem.")
@click.option("--description", default="VQ-VAE image codec", show_default=True,
              help="One-line description stored in the weights.")
@click.option("--register/--no-register", default=True, show_default=True,
              help="Add the result to models.json in OUT's folder, so `vqcodec models` lists it.")
@click.option("--default-model", is_flag=True, help="Mark the result as the default model in models.json.")
@reports_errors
def train(data_dir, out, config_file, steps, batch_size, device, resume, name, description, register,
          default_model):
    """Train a VQ-VAE codec on a folder of images (also under torchrun for several processes)."""
    from dataclasses import replace

    from . import train as training
    from . import zoo

    model_config, train_config = training.read_config_file(config_file)
    overrides = {k: v for k, v in {"steps": steps, "batch_size": batch_size}.items() if v is not None}
    train_config = replace(train_config, **overrides)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    training.train(data_dir, out_path, model_config=model_config, train_config=train_config,
                   name=name or out_path.stem, description=description, device_name=device,
                   resume=resume)
    if register and training.is_main_process():
        entry = zoo.register(out_path, default=default_model)
        click.echo(f"wrote {out_path} (sha256 {entry.sha256})")


@main.command()
@click.argument("dirs", metavar="[DIR ...]", nargs=-1, type=click.Path(path_type=str))
@click.option("--model", "model_name", default=None,
              help="Bundled model to benchmark (see `vqcodec models`). Default: the default model.")
@click.option("--codecs", default="vqz,jpeg,webp,avif", show_default=True,
              help="Comma-separated codecs to compare: vqz (vqcodec, every quality level), jpeg, "
                   "webp, avif (Pillow; AVIF is skipped with a warning if Pillow lacks it).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Also write every result (per-image values, BD-rates, codebook usage, versions, "
                   "machine) to this JSON file; it is replaced if it exists.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Also draw the RD curves (PSNR over 0..1 bpp, with published Ballé 2018 Kodak "
                   "points) to this PNG file; needs matplotlib.")
@click.option("--markdown", is_flag=True, help="Print the table as Markdown.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N images (sorted by path).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar on stderr.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch (vqcodec's timings depend on it; recorded in the JSON). "
                   "Default: torch's own choice.")
@reports_errors
def bench(dirs, model_name, codecs, json_out, plot_out, markdown, limit, progress, threads):
    """Rate-distortion and speed of vqcodec side by side with JPEG, WebP and AVIF.

    DIR may be folders (searched recursively for images) or image files; default: the
    sample image shipped with vqcodec. Every image is tested as 8-bit RGB (gray is
    replicated, alpha is dropped). Prints, per codec and quality, mean bpp (real file
    sizes, .vqz header included), RGB PSNR, MS-SSIM and encode/decode seconds per
    image, then the BD-rate of vqcodec against each classic codec (PSNR, up to 1 bpp)."""
    from . import bench as benchmark
    from . import images

    chosen = benchmark.parse_codecs(codecs)
    sources = list(dirs) or sorted(str(p) for p in images.sample_image_path().parent.glob("*.png"))
    files = images.find_images(sources)[:limit]
    for out in (json_out, plot_out):
        if out is not None:
            path = Path(out)
            if path.is_dir():
                raise Failure(f"output {path} is a directory")
            if not path.parent.is_dir():
                raise Failure(f"folder {path.parent} of output {path} does not exist")
    if plot_out is not None:
        try:
            benchmark.require_matplotlib()
        except ImportError as error:
            raise Failure(str(error)) from None
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    results = benchmark.run_bench(files, chosen, model=model_name, progress=progress)
    if json_out is not None:
        from .fileio import atomic_write_bytes

        atomic_write_bytes(json_out, (json.dumps(results, indent=2) + "\n").encode())
    if plot_out is not None:
        benchmark.plot_rd(results, plot_out)
    click.echo(benchmark.format_table(results, markdown=markdown), nl=False)


if __name__ == "__main__":
    main()
