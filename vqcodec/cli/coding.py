"""The commands that code files: encode, decode and info, each a batch of jobs (see batch)."""
from __future__ import annotations

import functools
import time
from pathlib import Path

import click

from .batch import (STDIO, Failure, Job, deliver, output_path, plan, read_source, refuse_existing, reports_errors, run,
                    with_warnings)


class CoderChoice(click.Choice):
    """click.Choice over codec.CODERS, read only when a value is checked or completed:
    codec imports torch, which `--help` should not wait for."""

    def __init__(self) -> None:
        super().__init__((), case_sensitive=True)

    @property
    def choices(self):
        from .. import codec

        return tuple(codec.CODERS)

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ assigns it
        pass

    def get_metavar(self, param, ctx=None) -> str:
        return "NAME"


def _batch_options(data: str, verbose: str):
    """-f, -j, --json and -v of a command that writes `data` files (encode, decode)."""
    options = [
        click.option("-f", "--force", is_flag=True,
                     help=f"Overwrite outputs that exist (and allow {data} data on a terminal)."),
        click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Worker processes for several inputs (each runs torch on one thread); "
                          "a single file always runs in this process."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print one JSON object per file, one per line, on stdout (on stderr with -o -)."),
        click.option("-v", "--verbose", is_flag=True, help=verbose),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


def _encode_job(job: Job, *, quality, model, coder, force, metadata, target_bpp=None, target_psnr=None,
                refine_steps=0, color_correction=None) -> dict:
    from .. import codec

    input_path, data = read_source(job.source)
    out = None if job.target == STDIO else output_path(input_path, job.target, ".vqz")
    refuse_existing(out, force)
    started = time.perf_counter()
    if target_bpp is None and target_psnr is None:
        result, notes = with_warnings(lambda: codec.encode_image(data, quality=quality, model=model, coder=coder,
                                                                 metadata=metadata, refine_steps=refine_steps,
                                                                 color_correction=color_correction))
    else:
        result, notes = with_warnings(lambda: codec.encode_to_target(
            data, target_bpp=target_bpp, target_psnr=target_psnr, model=model, coder=coder, metadata=metadata,
            refine_steps=refine_steps, color_correction=color_correction))
    deliver(out, result.data, force, job.make_parent)
    h = result.header
    return {"ok": True, "input": job.source, "output": STDIO if out is None else str(out),
            "width": h.width, "height": h.height, "mode": h.mode, "model": result.model,
            "quality": h.quality, "coder": h.coder, "metadata": list(result.metadata), "bytes": len(result.data),
            "bpp": result.bpp, "seconds": round(time.perf_counter() - started, 4), "warnings": notes}


def _encode_text(r: dict) -> str:
    return (f"{r['output']}: {r['width']}x{r['height']} {r['mode']}, model {r['model']} q{r['quality']}, "
            f"{r['bytes']} bytes, {r['bpp']:.4f} bpp, {r['seconds']:.2f} s")


def _check_format(ctx, param, value: str | None) -> str | None:
    """--format: a Pillow format name or suffix (png, JPEG, jpg, .webp) -> Pillow's name."""
    if value is None:
        return None
    from PIL import Image

    from .. import pil_plugin

    Image.init()
    name = value.strip().lstrip(".")
    fmt = name.upper() if name.upper() in Image.SAVE else Image.registered_extensions().get("." + name.lower())
    if fmt is None or fmt not in Image.SAVE or fmt == pil_plugin.FORMAT:
        raise click.BadParameter(f"{value!r} is not an image format Pillow can write "
                                 "(for example png, jpeg, webp, tiff, bmp)")
    return fmt


def _decode_job(job: Job, *, image_format, force) -> dict:
    from .. import codec, images, pil_plugin

    input_path, data = read_source(job.source)
    out = (None if job.target == STDIO
           else output_path(input_path, job.target, images.suffix_for_format(image_format or "PNG")))
    refuse_existing(out, force)
    fmt = image_format or ("PNG" if out is None else images.format_for_path(out))
    if fmt == pil_plugin.FORMAT:
        raise Failure(f"decode writes an image, not .vqz ({out}); choose another suffix, or re-encode "
                      "with `vqcodec encode FILE.vqz -o OTHER.vqz`")
    from ..fileio import ImageMetadata

    started = time.perf_counter()
    picture = codec.decode(data)
    metadata = ImageMetadata.from_info(picture.info)
    encoded, notes = with_warnings(lambda: images.encode_image_bytes(picture, fmt, metadata))
    deliver(out, encoded, force, job.make_parent)
    return {"ok": True, "input": job.source, "output": STDIO if out is None else str(out), "format": fmt,
            "width": picture.width, "height": picture.height, "mode": picture.mode,
            "metadata": list(metadata.items()), "bytes": len(encoded),
            "seconds": round(time.perf_counter() - started, 4), "warnings": notes}


def _check_metadata(ctx, param, value: str | None) -> tuple[str, ...] | None:
    """--metadata: all, none or a comma list of icc, exif, xmp -> the kinds (None: the default)."""
    if value is None:
        return None
    from ..fileio import metadata_kinds

    try:
        return metadata_kinds(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _decode_text(r: dict) -> str:
    return f"{r['output']}: {r['width']}x{r['height']} {r['mode']}, {r['seconds']:.2f} s"


def _info_job(job: Job) -> dict:
    from .. import codec

    _, data = read_source(job.source)
    return {"ok": True, "input": job.source, **codec.describe(data)}


def _find_images(folder: Path) -> list[Path]:
    from .. import images

    try:
        return images.find_images([folder])
    except ValueError:
        return []


def _find_vqz(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() == ".vqz")


@click.command()
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-o", "--output", type=click.Path(path_type=str), default=None,
              help="Where to write: a .vqz file, '-' for standard output, or a folder (one that exists "
                   "or a name ending in '/'; with several inputs any name; created if missing). "
                   "Default: each INPUT with the suffix .vqz; standard output for INPUT '-'.")
@click.option("-q", "--quality", type=int, default=None,
              help="Quality level, 1 (smallest file) to the model's maximum (best picture); "
                   "see `vqcodec models`. Default: the model's default level.")
@click.option("--target-bpp", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Instead of -q: per image, the highest quality level whose file is at most this many bits "
                   "per pixel (measured on the file itself; a binary search over the levels). If even "
                   "the lowest level is larger, it is used with a warning.")
@click.option("--target-psnr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Instead of -q: per image, the lowest quality level whose decoded image reaches this "
                   "RGB PSNR in dB (measured by decoding it; a binary search over the levels). If no "
                   "level reaches it, the highest is used with a warning.")
@click.option("--model", "model_name", default=None,
              help="Bundled model to use (see `vqcodec models`). Default: the default model.")
@click.option("--coder", type=CoderChoice(), default=None,
              help="Entropy coder for the index grids (a wrong name lists those available). "
                   "Default: the codec's choice for the model.")
@click.option("--metadata", "metadata", metavar="all|none|icc,exif,xmp", default=None, callback=_check_metadata,
              help="Which of the input's ICC profile, EXIF and XMP to store (a comma list picks some). "
                   "Default: all, as avifenc and cjxl do, so that colours, capture date and camera come back "
                   "on decode; 'none' gives the smallest file and drops location data, 'icc' keeps the "
                   "colours only. EXIF orientation is applied to the pixels and stored as 1.")
@click.option("--refine-steps", type=click.IntRange(min=0, max=10000), default=0, show_default=True,
              help="Gradient steps that fit the latents to each image before quantizing: a better picture at "
                   "about the same size, for encoding time (each step costs about two decodes; decoding is "
                   "unchanged). Measured: with the digits model, 20 steps add 0.3 dB at quality 2 and 6 dB at "
                   "quality 8, for up to 18 % more bytes; with the photo model, nothing.")
@click.option("--color-correction/--no-color-correction", default=None,
              help="Fit a colour correction to each image (decoding it once more while encoding) and store it "
                   "(20-75 bytes) where it makes a better file. Default: at the quality levels coded at "
                   "stride 8 only (photo2: 1-7, where it adds 0.05-0.7 dB on held-out photos and encoding "
                   "has the time), for colour images; files with one are .vqz format version 3.")
@_batch_options(data=".vqz", verbose="Print size, bits per pixel and time.")
@reports_errors
def encode(inputs, output, quality, target_bpp, target_psnr, model_name, coder, metadata, refine_steps,
           color_correction, force, jobs, as_json, verbose):
    """Compress image files (PNG, JPEG, WebP, TIFF, BMP, ...) to .vqz files.

    Any size from 1x1 up. Gray images stay gray, alpha is kept losslessly,
    palette/CMYK/16-bit images are converted to 8-bit RGB(A) or gray first,
    EXIF orientation is applied, and the ICC profile, EXIF and XMP are kept
    (see --metadata).

    INPUT may be '-' (standard input), several files, or folders (searched
    recursively for images; their layout is kept under -o). A file that fails
    is reported and the others go on; the exit code is then 1.

    \b
      vqcodec encode photo.png -q 3            # writes photo.vqz
      cat photo.png | vqcodec encode - > photo.vqz
      vqcodec encode a.png b.jpg shots/ -o out/ --jobs 2"""
    if sum(x is not None for x in (quality, target_bpp, target_psnr)) > 1:
        raise click.UsageError("give at most one of -q, --target-bpp and --target-psnr")
    batch, planned, problems = plan(inputs, output, ".vqz", _find_images, "images")
    work = functools.partial(_encode_job, quality=quality, model=model_name, coder=coder, force=force,
                             metadata=metadata, target_bpp=target_bpp, target_psnr=target_psnr,
                             refine_steps=refine_steps, color_correction=color_correction)
    run(batch, planned, problems, work, workers=jobs, as_json=as_json, force=force,
        text=_encode_text if verbose else None)


@click.command()
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-o", "--output", type=click.Path(path_type=str), default=None,
              help="Where to write: an image file, whose suffix picks the format (.png, .jpg, .webp, "
                   ".tif, .bmp, ...); '-' for standard output; or a folder (one that exists or a name "
                   "ending in '/'; with several inputs any name; created if missing). Default: each "
                   "INPUT with the suffix .png (or --format's); standard output for INPUT '-'.")
@click.option("--format", "image_format", metavar="FORMAT", default=None, callback=_check_format,
              help="Image format to write: png, jpeg, webp, tiff, bmp or any other that Pillow writes; "
                   "wins over OUTPUT's suffix. Default: OUTPUT's suffix decides, else PNG.")
@_batch_options(data="image", verbose="Print the size, mode and time.")
@reports_errors
def decode(inputs, output, image_format, force, jobs, as_json, verbose):
    """Rebuild images from .vqz files.

    The ICC profile, EXIF and XMP stored in a file are written into PNG, JPEG,
    WebP and TIFF outputs (other formats cannot hold them: a warning says so).

    INPUT may be '-' (standard input), several files, or folders (searched
    recursively for .vqz files; their layout is kept under -o). A file that
    fails is reported and the others go on; the exit code is then 1.

    \b
      vqcodec decode photo.vqz -o photo.webp
      vqcodec decode - -o - < photo.vqz > photo.png
      vqcodec decode out/ -o png/ --format png --jobs 2"""
    from .. import images

    suffix = images.suffix_for_format(image_format or "PNG")
    batch, planned, problems = plan(inputs, output, suffix, _find_vqz, ".vqz files")
    work = functools.partial(_decode_job, image_format=image_format, force=force)
    run(batch, planned, problems, work, workers=jobs, as_json=as_json, force=force,
        text=_decode_text if verbose else None)


@click.command()
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per file, one per line: the fields plus input and ok.")
@reports_errors
def info(inputs, as_json):
    """Show every header field of .vqz files, their sizes and bits per pixel.

    INPUT may be '-' (standard input), several files, or folders (searched
    recursively for .vqz files)."""
    batch, planned, problems = plan(inputs, None, ".vqz", _find_vqz, ".vqz files")
    planned = [Job(job.source, None) for job in planned]  # info writes no files

    shown = []

    def text(record: dict) -> str:
        lines = [""] if shown else []  # a blank line between files
        shown.append(record["input"])
        for key, value in record.items():
            if key == "ok" or (key == "input" and not batch):
                continue
            if key == "grid_shapes" and value:
                value = ", ".join(f"{r}x{c}" for r, c in value)
            elif key == "layers" and value:
                value = ", ".join(f"stride {layer['stride']} x {layer['stages']}" for layer in value)
            elif key == "metadata":
                value = ", ".join(f"{kind} {size} B" for kind, size in value.items()) or "none"
            elif key == "bpp":
                value = f"{value:.4f}"
            lines.append(f"{key:20s} {value}")
        return "\n".join(lines)

    run(batch, planned, problems, _info_job, as_json=as_json, text=None if as_json else text)
