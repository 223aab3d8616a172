"""The commands that measure the codec: demo (one image, every level) and bench (vs JPEG, WebP, AVIF)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from .batch import Failure, read_input, reports_errors
from .coding import CoderChoice


@click.command()
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
    from .. import bench as benchmark
    from .. import images, zoo

    source = Path(input) if input else images.sample_image_path()
    if input:
        read_input(input)
    original = images.load_image(source)
    entry = zoo.find(model_name)
    levels = qualities or tuple(entry.info()["quality_levels"])
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    click.echo(f"{source} ({original.width}x{original.height} {original.mode}), model {entry.name}")
    click.echo(f"{'quality':>7} {'bytes':>8} {'bpp':>7} {'PSNR dB':>8} {'encode s':>9} {'decode s':>9}")
    for level in levels:
        trip = benchmark.round_trip(original, level, entry.name)
        click.echo(f"{level:>7} {len(trip.data):>8} {trip.bpp:>7.4f} {trip.psnr:>8.2f} "
                   f"{trip.encode_s:>9.3f} {trip.decode_s:>9.3f}")
        if output_dir:
            trip.decoded.save(Path(output_dir) / f"{source.stem}_q{level}.png")


@click.command()
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
@click.option("--coder", type=CoderChoice(), default=None,
              help="vqcodec's entropy coder: prior or zstd. Default: the model's (prior when it has one). "
                   "The same indices are also zstd-coded to report the bits per index each coder spends.")
@click.option("--rate-tradeoff", type=click.FloatRange(min=0), default=None,
              help="With the prior coder: weight of bits against distortion when the encoder picks "
                   "indices (0 = nearest codes). Default: the codec's tuned value.")
@click.option("--bd-max-bpp", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="BD-rates use the points up to this many bits per pixel; 0 = all points (small "
                   "images, such as 28x28 digits, are far above 1 bpp at every quality).")
@reports_errors
def bench(dirs, model_name, codecs, json_out, plot_out, markdown, limit, progress, threads, coder,
          rate_tradeoff, bd_max_bpp):
    """Rate-distortion and speed of vqcodec side by side with JPEG, WebP and AVIF.

    DIR may be folders (searched recursively for images) or image files; default: the
    sample image shipped with vqcodec. Every image is tested as 8-bit RGB (gray is
    replicated, alpha is dropped). Prints, per codec and quality, mean bpp (real file
    sizes, .vqz header included), RGB PSNR, MS-SSIM and encode/decode seconds per
    image, then the BD-rate of vqcodec against each classic codec (PSNR, up to 1 bpp unless
    --bd-max-bpp says otherwise)."""
    from .. import bench as benchmark
    from .. import images, plot

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
            plot.require_matplotlib()
        except ImportError as error:
            raise Failure(str(error)) from None
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    results = benchmark.run_bench(files, chosen, model=model_name, progress=progress, coder=coder,
                                  rate_tradeoff=rate_tradeoff, bd_max_bpp=bd_max_bpp or None)
    if json_out is not None:
        from ..fileio import atomic_write_bytes

        atomic_write_bytes(json_out, (json.dumps(results, indent=2) + "\n").encode())
    if plot_out is not None:
        plot.plot_rd(results, plot_out)
    click.echo(benchmark.format_table(results, markdown=markdown), nl=False)
