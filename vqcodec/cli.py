"""Command line: parses options, calls codec / zoo / train, reports errors in one line.

Exit codes: 0 success; 1 the work failed (unreadable input, corrupt .vqz, missing model,
output exists without --force, I/O error); 2 bad usage (unknown option, bad value).

encode, decode and info take several inputs and folders (a batch: one failed file is
reported as `error: FILE: message` and the rest go on; exit code 1 if any failed), and `-`
for standard input or output. With --json they print one JSON object per file, one per
line, on stdout, or on stderr when `-o -` sends the data itself to stdout. Metadata left out
(malformed in an input, or more than an output format holds) is reported on stderr as
`warning: [FILE: ]message`, and listed under "warnings" in the JSON record.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import click

from . import __version__

EXIT_FAILURE = 1


class Failure(click.ClickException):
    exit_code = EXIT_FAILURE

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


# The errors that are the input's or the environment's fault, not a bug: they become a
# one-line message. VqzError, ModelError and ImageInputError are ValueErrors.
EXPECTED_ERRORS = (click.ClickException, OSError, ValueError, MemoryError)


def _error_message(error: BaseException) -> str:
    """The one-line message for one of EXPECTED_ERRORS."""
    if isinstance(error, click.ClickException):
        return error.format_message()
    if isinstance(error, FileExistsError):
        return str(error)
    if isinstance(error, OSError):
        where = f" {error.filename}" if error.filename else ""
        return f"{error.strerror or error}:{where}"
    return str(error) or type(error).__name__


def reports_errors(command):
    """Turn the library's expected errors into a one-line message and exit code 1."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:  # the reader went away (`vqcodec models | head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise click.exceptions.Exit(EXIT_FAILURE) from None
        except EXPECTED_ERRORS as error:
            raise Failure(_error_message(error)) from None
    return wrapper


def _output_path(input_path: Path | None, output: str | None, suffix: str) -> Path:
    """OUTPUT, or INPUT with `suffix`; refuses a folder and the input itself. input_path is
    None for standard input (then OUTPUT is required)."""
    path = Path(output) if output else input_path.with_suffix(suffix)
    if path.exists() and path.is_dir():
        raise Failure(f"output {path} is a directory")
    try:
        same = input_path is not None and path.exists() and path.resolve() == input_path.resolve()
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


# --------------------------------------------------------------- pipes and batches

STDIO = "-"  # as INPUT: standard input; as OUTPUT: standard output


def _read_source(source: str) -> tuple[Path | None, bytes]:
    """(path, bytes) of an INPUT; the path is None for standard input."""
    if source == STDIO:
        return None, click.open_file(STDIO, "rb").read()
    return _read_input(source)


def _deliver(out: Path | None, data: bytes, force: bool, make_parent: bool) -> None:
    """Write `data` atomically to `out`, or to standard output when `out` is None."""
    if out is None:
        stream = click.open_file(STDIO, "wb")
        stream.write(data)
        stream.flush()
        return
    if make_parent:
        out.parent.mkdir(parents=True, exist_ok=True)
    _write(out, data, force)


def _refuse_existing(out: Path | None, force: bool) -> None:
    if out is not None and out.exists() and not force:
        raise Failure(f"{out} already exists (use --force to overwrite)")


@dataclass(frozen=True)
class _Job:
    """One file of work: source is a path or "-"; target is a path, "-" (standard output)
    or None (the default name next to source); make_parent creates the target's folder."""
    source: str
    target: str | None
    make_parent: bool = False


def _with_warnings(work):
    """work() -> (its result, the messages of the metadata and rate-control warnings it gave)."""
    from .codec import RateControlWarning
    from .fileio import MetadataWarning

    reported = (MetadataWarning, RateControlWarning)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = work()
    shown = [str(w.message) for w in caught if issubclass(w.category, reported)]
    for w in caught:  # others as they would have been
        if not issubclass(w.category, reported):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result, shown


def _encode_job(job: _Job, *, quality, model, coder, force, metadata, target_bpp=None, target_psnr=None) -> dict:
    from . import codec

    input_path, data = _read_source(job.source)
    out = None if job.target == STDIO else _output_path(input_path, job.target, ".vqz")
    _refuse_existing(out, force)
    started = time.perf_counter()
    if target_bpp is None and target_psnr is None:
        result, notes = _with_warnings(lambda: codec.encode_image(data, quality=quality, model=model, coder=coder,
                                                                  metadata=metadata))
    else:
        result, notes = _with_warnings(lambda: codec.encode_to_target(
            data, target_bpp=target_bpp, target_psnr=target_psnr, model=model, coder=coder, metadata=metadata))
    _deliver(out, result.data, force, job.make_parent)
    h = result.header
    return {"ok": True, "input": job.source, "output": STDIO if out is None else str(out),
            "width": h.width, "height": h.height, "mode": h.mode, "model": result.model,
            "quality": h.quality, "coder": h.coder, "metadata": list(result.metadata), "bytes": len(result.data),
            "bpp": result.bpp, "seconds": round(time.perf_counter() - started, 4), "warnings": notes}


def _encode_text(r: dict) -> str:
    return (f"{r['output']}: {r['width']}x{r['height']} {r['mode']}, model {r['model']} q{r['quality']}, "
            f"{r['bytes']} bytes, {r['bpp']:.4f} bpp, {r['seconds']:.2f} s")


_SUFFIXES = {"JPEG": ".jpg", "TIFF": ".tif", "JPEG2000": ".jp2"}


def _suffix_for(image_format: str) -> str:
    """The usual file suffix of a Pillow format ("PNG" -> ".png", "JPEG" -> ".jpg")."""
    from PIL import Image

    if image_format in _SUFFIXES:
        return _SUFFIXES[image_format]
    return next((ext for ext, fmt in Image.registered_extensions().items() if fmt == image_format),
                "." + image_format.lower())


def _check_format(ctx, param, value: str | None) -> str | None:
    """--format: a Pillow format name or suffix (png, JPEG, jpg, .webp) -> Pillow's name."""
    if value is None:
        return None
    from PIL import Image

    from . import pil_plugin

    Image.init()
    name = value.strip().lstrip(".")
    fmt = name.upper() if name.upper() in Image.SAVE else Image.registered_extensions().get("." + name.lower())
    if fmt is None or fmt not in Image.SAVE or fmt == pil_plugin.FORMAT:
        raise click.BadParameter(f"{value!r} is not an image format Pillow can write "
                                 "(for example png, jpeg, webp, tiff, bmp)")
    return fmt


def _decode_job(job: _Job, *, image_format, force) -> dict:
    from . import codec, images, pil_plugin

    input_path, data = _read_source(job.source)
    out = (None if job.target == STDIO
           else _output_path(input_path, job.target, _suffix_for(image_format or "PNG")))
    _refuse_existing(out, force)
    fmt = image_format or ("PNG" if out is None else images.format_for_path(out))
    if fmt == pil_plugin.FORMAT:
        raise Failure(f"decode writes an image, not .vqz ({out}); choose another suffix, or re-encode "
                      "with `vqcodec encode FILE.vqz -o OTHER.vqz`")
    from .fileio import ImageMetadata

    started = time.perf_counter()
    picture = codec.decode(data)
    metadata = ImageMetadata.from_info(picture.info)
    encoded, notes = _with_warnings(lambda: images.encode_image_bytes(picture, fmt, metadata))
    _deliver(out, encoded, force, job.make_parent)
    return {"ok": True, "input": job.source, "output": STDIO if out is None else str(out), "format": fmt,
            "width": picture.width, "height": picture.height, "mode": picture.mode,
            "metadata": list(metadata.items()), "bytes": len(encoded),
            "seconds": round(time.perf_counter() - started, 4), "warnings": notes}


def _check_metadata(ctx, param, value: str | None) -> tuple[str, ...] | None:
    """--metadata: all, none or a comma list of icc, exif, xmp -> the kinds (None: the default)."""
    if value is None:
        return None
    from .fileio import metadata_kinds

    try:
        return metadata_kinds(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _decode_text(r: dict) -> str:
    return f"{r['output']}: {r['width']}x{r['height']} {r['mode']}, {r['seconds']:.2f} s"


def _info_job(job: _Job) -> dict:
    from . import codec

    _, data = _read_source(job.source)
    return {"ok": True, "input": job.source, **codec.describe(data)}


def _find_images(folder: Path) -> list[Path]:
    from . import images

    try:
        return images.find_images([folder])
    except ValueError:
        return []


def _find_vqz(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() == ".vqz")


def _plan(sources, output: str | None, suffix: str, find, what: str) -> tuple[bool, list[_Job], list]:
    """Turn INPUT... and -o into jobs: (batch, jobs, problems), problems being (input, message)
    pairs for inputs that name nothing to do. One INPUT file (or "-") is not a batch and keeps
    the single-file rules; several inputs or a folder (searched with find(folder), `what` it
    looks for) are a batch, whose -o is a folder (created if missing) that mirrors the layout
    of input folders. Outputs get `suffix`."""
    sources = list(sources)
    if STDIO in sources and len(sources) > 1:
        raise click.UsageError("'-' (standard input) must be the only INPUT")
    batch = len(sources) > 1 or any(s != STDIO and Path(s).is_dir() for s in sources)
    to_folder = output not in (None, STDIO) and (output.endswith(("/", os.sep)) or Path(output).is_dir())
    if not batch:
        source = sources[0]
        target = output
        if source == STDIO and output is None:
            target = STDIO
        elif to_folder:
            if source == STDIO:
                raise click.UsageError("with INPUT '-', -o must name a file, or be '-' for standard output")
            target = str((Path(output) / Path(source).name).with_suffix(suffix))
        return False, [_Job(source, target, make_parent=to_folder)], []
    if output == STDIO:
        raise click.UsageError("-o - (standard output) takes a single INPUT file, not several or a folder")
    if output is not None and not to_folder and Path(output).exists():
        raise click.UsageError(f"-o {output} is a file; with several inputs or a folder, -o must be a folder")
    out_dir = None if output is None else Path(output)
    jobs, problems, claimed, seen = [], [], {}, set()
    for source in sources:
        path = Path(source)
        if path.is_dir():
            pairs = [(f, f.relative_to(path)) for f in find(path)]
            if not pairs:
                problems.append((source, f"is a directory with no {what} in it"))
        elif path.is_file():
            pairs = [(path, Path(path.name))]
        else:
            problems.append((source, "no such file or folder"))
            continue
        for file, relative in pairs:
            if os.path.abspath(file) in seen:  # named twice, e.g. as a file and inside a folder
                continue
            seen.add(os.path.abspath(file))
            target = (file if out_dir is None else out_dir / relative).with_suffix(suffix)
            key = os.path.abspath(target)
            if key in claimed:
                problems.append((str(file), f"its output {target} would also be the output of {claimed[key]}"))
                continue
            claimed[key] = str(file)
            jobs.append(_Job(str(file), str(target), make_parent=out_dir is not None))
    return True, jobs, problems


def _say(message: str, err: bool) -> None:
    """click.echo, clearing a progress bar on the terminal first."""
    from tqdm import tqdm

    with tqdm.external_write_mode(file=sys.stderr):
        click.echo(message, err=err)


def _attempt(work, job: _Job):
    """work(job), or the one-line message of an expected error (a worker cannot raise
    Failure to the CLI process)."""
    try:
        return work(job)
    except EXPECTED_ERRORS as error:
        return _error_message(error)


def _init_worker() -> None:
    """Worker processes run torch on one thread each, so that N workers share N cores."""
    import torch

    torch.set_num_threads(1)


def _outcomes(jobs: list[_Job], work, workers: int, progress: bool):
    """Yield (source, record or error message) for each job, in the order they finish; in
    `workers` processes when that is more than 1. A progress bar goes to stderr when
    `progress` and stderr is a terminal."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="file", file=sys.stderr, leave=False, dynamic_ncols=True,
               disable=not (progress and sys.stderr.isatty()))
    with bar:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield job.source, _attempt(work, job)
                bar.update()
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        # Not fork: the parent may hold threads (tqdm, torch/OpenMP pools) that a forked
        # child would inherit in a broken state.
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), initializer=_init_worker,
                                   mp_context=multiprocessing.get_context(method))
        try:
            futures = {pool.submit(_attempt, work, job): job for job in jobs}
            for future in as_completed(futures):
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    outcome = "a worker process died (out of memory?)"
                yield futures[future].source, outcome
                bar.update()
        except BaseException:  # Ctrl-C, or the consumer stopped early: drop the queued files
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()


def _run(batch: bool, jobs: list[_Job], problems: list, work, *, workers: int = 1, as_json: bool = False,
         text=None, force: bool = False) -> None:
    """Run the jobs and report each file: a JSON line (--json) and/or text(record) when it is
    done, `error: [FILE: ]message` on stderr when it failed. JSON and text go to stdout, or to
    stderr when stdout carries the data (-o -); text also goes to stderr with --json. Exits
    with code 1 if any input failed."""
    data_to_stdout = any(job.target == STDIO for job in jobs)
    if data_to_stdout and not force and click.open_file(STDIO, "wb").isatty():
        raise click.UsageError("refusing to write binary data to a terminal; redirect standard output, "
                               "give -o FILE, or add --force")
    failed = 0

    def failure(source: str, message: str) -> None:
        nonlocal failed
        failed += 1
        _say(f"error: {source}: {message}" if batch else f"error: {message}", err=True)
        if as_json:
            _say(json.dumps({"ok": False, "input": source, "error": message}), err=data_to_stdout)

    for source, message in problems:
        failure(source, message)
    for source, outcome in _outcomes(jobs, work, workers, progress=batch):
        if isinstance(outcome, str):
            failure(source, outcome)
            continue
        for note in outcome.get("warnings", ()):
            _say(f"warning: {source}: {note}" if batch else f"warning: {note}", err=True)
        if as_json:
            _say(json.dumps(outcome), err=data_to_stdout)
        shown = text(outcome) if text is not None else None
        if shown is not None:
            _say(shown, err=data_to_stdout or as_json)
    total = len(jobs) + len(problems)
    if failed and total > 1:
        raise Failure(f"{failed} of {total} files failed")
    if failed:
        raise click.exceptions.Exit(EXIT_FAILURE)


class _CoderChoice(click.Choice):
    """click.Choice over codec.CODERS, read only when a value is checked or completed:
    codec imports torch, which `--help` should not wait for."""

    def __init__(self) -> None:
        super().__init__((), case_sensitive=True)

    @property
    def choices(self):
        from . import codec

        return tuple(codec.CODERS)

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ assigns it
        pass

    def get_metavar(self, param, ctx=None) -> str:
        return "NAME"


_JOBS_HELP = ("Worker processes for several inputs (each runs torch on one thread); "
              "a single file always runs in this process.")

_EPILOG = """\b
Shell completion: add the line for your shell to its startup file.
  bash (~/.bashrc):  eval "$(_VQCODEC_COMPLETE=bash_source vqcodec)"
  zsh (~/.zshrc):    eval "$(_VQCODEC_COMPLETE=zsh_source vqcodec)"
  fish:              _VQCODEC_COMPLETE=fish_source vqcodec > ~/.config/fish/completions/vqcodec.fish
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=_EPILOG)
@click.version_option(__version__, "--version", prog_name="vqcodec")
def main() -> None:
    """vqcodec: a lossy image codec built on a trained VQ-VAE.

    An image is mapped to grids of codebook indices by a trained VQ-VAE, the indices
    are entropy-coded, and the result is stored in a .vqz file that names the exact
    model (by sha256) needed to decode it."""


@main.command()
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
@click.option("--coder", type=_CoderChoice(), default=None,
              help="Entropy coder for the index grids (a wrong name lists those available). "
                   "Default: the codec's choice for the model.")
@click.option("--metadata", "metadata", metavar="all|none|icc,exif,xmp", default=None, callback=_check_metadata,
              help="Which of the input's ICC profile, EXIF and XMP to store (a comma list picks some). "
                   "Default: all, as avifenc and cjxl do, so that colours, capture date and camera come back "
                   "on decode; 'none' gives the smallest file and drops location data, 'icc' keeps the "
                   "colours only. EXIF orientation is applied to the pixels and stored as 1.")
@click.option("-f", "--force", is_flag=True,
              help="Overwrite outputs that exist (and allow .vqz data on a terminal).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True, help=_JOBS_HELP)
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per file, one per line, on stdout (on stderr with -o -).")
@click.option("-v", "--verbose", is_flag=True, help="Print size, bits per pixel and time.")
@reports_errors
def encode(inputs, output, quality, target_bpp, target_psnr, model_name, coder, metadata, force, jobs, as_json,
           verbose):
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
    batch, planned, problems = _plan(inputs, output, ".vqz", _find_images, "images")
    work = functools.partial(_encode_job, quality=quality, model=model_name, coder=coder, force=force,
                             metadata=metadata, target_bpp=target_bpp, target_psnr=target_psnr)
    _run(batch, planned, problems, work, workers=jobs, as_json=as_json, force=force,
         text=_encode_text if verbose else None)


@main.command()
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-o", "--output", type=click.Path(path_type=str), default=None,
              help="Where to write: an image file, whose suffix picks the format (.png, .jpg, .webp, "
                   ".tif, .bmp, ...); '-' for standard output; or a folder (one that exists or a name "
                   "ending in '/'; with several inputs any name; created if missing). Default: each "
                   "INPUT with the suffix .png (or --format's); standard output for INPUT '-'.")
@click.option("--format", "image_format", metavar="FORMAT", default=None, callback=_check_format,
              help="Image format to write: png, jpeg, webp, tiff, bmp or any other that Pillow writes; "
                   "wins over OUTPUT's suffix. Default: OUTPUT's suffix decides, else PNG.")
@click.option("-f", "--force", is_flag=True,
              help="Overwrite outputs that exist (and allow image data on a terminal).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True, help=_JOBS_HELP)
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per file, one per line, on stdout (on stderr with -o -).")
@click.option("-v", "--verbose", is_flag=True, help="Print the size, mode and time.")
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
    suffix = _suffix_for(image_format or "PNG")
    batch, planned, problems = _plan(inputs, output, suffix, _find_vqz, ".vqz files")
    work = functools.partial(_decode_job, image_format=image_format, force=force)
    _run(batch, planned, problems, work, workers=jobs, as_json=as_json, force=force,
         text=_decode_text if verbose else None)


@main.command()
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per file, one per line: the fields plus input and ok.")
@reports_errors
def info(inputs, as_json):
    """Show every header field of .vqz files, their sizes and bits per pixel.

    INPUT may be '-' (standard input), several files, or folders (searched
    recursively for .vqz files)."""
    batch, planned, problems = _plan(inputs, None, ".vqz", _find_vqz, ".vqz files")
    planned = [_Job(job.source, None) for job in planned]  # info writes no files

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

    _run(batch, planned, problems, _info_job, as_json=as_json, text=None if as_json else text)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@reports_errors
def models(as_json):
    """List the bundled models: name, sha256, quality levels, coders, default, description."""
    from . import zoo

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
    from . import bench as benchmark
    from . import images, zoo

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
        trip = benchmark.round_trip(original, level, entry.name)
        click.echo(f"{level:>7} {len(trip.data):>8} {trip.bpp:>7.4f} {trip.psnr:>8.2f} "
                   f"{trip.encode_s:>9.3f} {trip.decode_s:>9.3f}")
        if output_dir:
            trip.decoded.save(Path(output_dir) / f"{source.stem}_q{level}.png")


def _registration_options(command):
    """--register/--no-register and --default-model, for the training commands."""
    command = click.option("--default-model", is_flag=True,
                           help="Mark the result as the default model in models.json.")(command)
    return click.option("--register/--no-register", default=True, show_default=True,
                        help="Add the result to models.json in OUT's folder, so `vqcodec models` lists it.")(command)


def _register(out_path: Path, default: bool) -> None:
    from . import zoo

    entry = zoo.register(out_path, default=default)
    click.echo(f"wrote {out_path} (sha256 {entry.sha256})")


@main.command()
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, path_type=str),
              help="Folder of training images (searched recursively; PNG, JPEG, WebP, ...), or a .npz "
                   "file with an 'images' uint8 array (N,H,W[,3]) such as mnist5k.npz. The last images "
                   "(by name, or in the array) are held out for the periodic check.")
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
@click.option("--init-from", type=click.Path(exists=True, dir_okay=False, path_type=str), default=None,
              help="Warm start from an earlier model's weights (.safetensors); tensors of another shape, "
                   "such as a wider latent, get the overlapping part. Ignored when resuming.")
@click.option("--name", default=None, help="Model name stored in the weights. Default: OUT's file stem.")
@click.option("--description", default="VQ-VAE image codec", show_default=True,
              help="One-line description stored in the weights.")
@_registration_options
@reports_errors
def train(data_dir, out, config_file, steps, batch_size, device, resume, init_from, name, description,
          register, default_model):
    """Train a VQ-VAE codec on a folder of images (also under torchrun for several processes)."""
    from dataclasses import replace

    from . import train as training

    model_config, train_config = training.read_config_file(config_file)
    overrides = {k: v for k, v in {"steps": steps, "batch_size": batch_size}.items() if v is not None}
    train_config = replace(train_config, **overrides)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    training.train(data_dir, out_path, model_config=model_config, train_config=train_config,
                   name=name or out_path.stem, description=description, device_name=device,
                   resume=resume, init_from=init_from)
    if register and training.is_main_process():
        _register(out_path, default_model)


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


@main.command()
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
                   "likely index. Default: the model's own (see `vqcodec models --json`; 0.6 for digits).")
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
    from . import codec, images
    from .fileio import atomic_write_bytes

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


@main.command("train-prior")
@click.option("--weights", required=True, type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="Weights of the trained VQ-VAE whose index grids the prior learns. A prior already in "
                   "the file is replaced, or, with rate_tradeoff > 0 in the config's train section, refined: "
                   "training continues from it on the indices the rate-aware encoder makes with it.")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, path_type=str),
              help="Training images, as for `vqcodec train` (use the VQ-VAE's data: the same images are "
                   "held out).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Weights file to write: the VQ-VAE plus the prior, under one sha256. May equal --weights. "
                   "A resumable checkpoint goes next to it as NAME.prior.ckpt, the index grids as NAME.grids.pt.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=str),
              default=None, help='JSON file {"prior": {...}, "train": {...}} overriding the defaults of '
                                 "vqcodec.config.PriorConfig and PriorTrainConfig.")
@click.option("--steps", type=int, default=None, help="Training steps (overrides the config).")
@click.option("--layer", type=click.Choice(["base", "enhance"]), default="base", show_default=True,
              help="Whose index grids the prior learns: the base model's, or those of the enhancement "
                   "layer in --weights (see train-enhance), which code the quality levels above the base's.")
@_registration_options
@reports_errors
def train_prior(weights, data_dir, out, config_file, steps, layer, register, default_model):
    """Train the learned prior (entropy model and sampler) of a trained VQ-VAE, or of its
    enhancement layer."""
    from dataclasses import replace

    from . import train_prior as training

    prior_fields, train_config = training.read_prior_config_file(config_file)
    if steps is not None:
        train_config = replace(train_config, steps=steps)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if layer == "enhance":
        from .train_enhance import train_enhance_prior as train
    else:
        train = training.train_prior
    train(weights, data_dir, out_path, prior_fields=prior_fields, train_config=train_config)
    if register:
        _register(out_path, default_model)


@main.command("train-enhance")
@click.option("--weights", required=True, type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="Weights of the trained base model (with its prior, if any). The layer learns what the "
                   "base model's top level, encoded as the codec encodes it, leaves out. An enhancement "
                   "layer already in the file is replaced.")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, path_type=str),
              help="Training images, as for `vqcodec train` (use the base model's data: the same images are "
                   "held out).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Weights file to write: base model, prior and enhancement layer, under one sha256. May equal "
                   "--weights. A resumable checkpoint goes next to it as NAME.enhance.ckpt, the base "
                   "reconstructions as NAME.pairs.pt.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=str),
              default=None, help='JSON file {"enhance": {...}, "train": {...}} overriding the defaults of '
                                 "vqcodec.config.EnhanceConfig and TrainConfig.")
@click.option("--steps", type=int, default=None, help="Training steps (overrides the config).")
@click.option("--description", default=None,
              help="One-line description stored in the weights (for `vqcodec models`). Default: the base model's.")
@_registration_options
@reports_errors
def train_enhance(weights, data_dir, out, config_file, steps, description, register, default_model):
    """Train the enhancement layer: the quality levels above the base model's top level."""
    from dataclasses import replace

    from . import train_enhance as training

    enhance_config, train_config = training.read_enhance_config_file(config_file)
    if steps is not None:
        train_config = replace(train_config, steps=steps)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    training.train_enhance(weights, data_dir, out_path, enhance_config=enhance_config, train_config=train_config,
                           description=description)
    if register:
        _register(out_path, default_model)


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
@click.option("--coder", type=_CoderChoice(), default=None,
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
    from . import bench as benchmark
    from . import images, plot

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
        from .fileio import atomic_write_bytes

        atomic_write_bytes(json_out, (json.dumps(results, indent=2) + "\n").encode())
    if plot_out is not None:
        plot.plot_rd(results, plot_out)
    click.echo(benchmark.format_table(results, markdown=markdown), nl=False)


if __name__ == "__main__":
    main()
