"""The batch machinery of the commands: inputs (files, folders, standard input) planned into
jobs, run in this process or in workers, outputs written atomically, and every failure
reported in one line (`error: [FILE: ]message`, exit code 1)."""
from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import click

EXIT_FAILURE = 1


class Failure(click.ClickException):
    """An expected failure: `error: message` on stderr, exit code 1."""

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


def output_path(input_path: Path | None, output: str | None, suffix: str) -> Path:
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
    from ..fileio import atomic_write_bytes

    if path.exists() and not force:
        raise Failure(f"{path} already exists (use --force to overwrite)")
    try:
        atomic_write_bytes(path, data, overwrite=force)
    except FileExistsError:
        raise Failure(f"{path} already exists (use --force to overwrite)") from None
    except OSError as error:
        raise Failure(f"cannot write {path}: {error.strerror or error}") from None


def read_input(path: str) -> tuple[Path, bytes]:
    """(path, bytes) of an INPUT file; Failure for a folder or a missing file."""
    p = Path(path)
    if p.is_dir():
        raise Failure(f"{p} is a directory, not a file")
    if not p.exists():
        raise Failure(f"no such file: {p}")
    return p, p.read_bytes()


# --------------------------------------------------------------- pipes and batches

STDIO = "-"  # as INPUT: standard input; as OUTPUT: standard output


def read_source(source: str) -> tuple[Path | None, bytes]:
    """(path, bytes) of an INPUT; the path is None for standard input."""
    if source == STDIO:
        return None, click.open_file(STDIO, "rb").read()
    return read_input(source)


def deliver(out: Path | None, data: bytes, force: bool, make_parent: bool) -> None:
    """Write `data` atomically to `out`, or to standard output when `out` is None."""
    if out is None:
        stream = click.open_file(STDIO, "wb")
        stream.write(data)
        stream.flush()
        return
    if make_parent:
        out.parent.mkdir(parents=True, exist_ok=True)
    _write(out, data, force)


def refuse_existing(out: Path | None, force: bool) -> None:
    """Failure when `out` exists and --force was not given."""
    if out is not None and out.exists() and not force:
        raise Failure(f"{out} already exists (use --force to overwrite)")


@dataclass(frozen=True)
class Job:
    """One file of work: source is a path or "-"; target is a path, "-" (standard output)
    or None (the default name next to source); make_parent creates the target's folder."""
    source: str
    target: str | None
    make_parent: bool = False


def with_warnings(work):
    """work() -> (its result, the messages of the metadata and rate-control warnings it gave)."""
    from ..codec import RateControlWarning
    from ..fileio import MetadataWarning

    reported = (MetadataWarning, RateControlWarning)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = work()
    shown = [str(w.message) for w in caught if issubclass(w.category, reported)]
    for w in caught:  # others as they would have been
        if not issubclass(w.category, reported):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result, shown


def plan(sources, output: str | None, suffix: str, find, what: str) -> tuple[bool, list[Job], list]:
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
        return False, [Job(source, target, make_parent=to_folder)], []
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
            jobs.append(Job(str(file), str(target), make_parent=out_dir is not None))
    return True, jobs, problems


def _say(message: str, err: bool) -> None:
    """click.echo, clearing a progress bar on the terminal first."""
    from tqdm import tqdm

    with tqdm.external_write_mode(file=sys.stderr):
        click.echo(message, err=err)


def _attempt(work, job: Job):
    """work(job), or the one-line message of an expected error (a worker cannot raise
    Failure to the CLI process)."""
    try:
        return work(job)
    except EXPECTED_ERRORS as error:
        return _error_message(error)


def _init_worker() -> None:
    """Worker processes run torch on one thread each, so that N workers share N cores, and
    keep the memory they free (allocator.keep_freed_memory), as the CLI process does."""
    import torch

    from ..allocator import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(1)


def _outcomes(jobs: list[Job], work, workers: int, progress: bool):
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


def run(batch: bool, jobs: list[Job], problems: list, work, *, workers: int = 1, as_json: bool = False,
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
