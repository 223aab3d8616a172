"""Command line: parses options, calls codec / zoo / train / bench, reports errors in one line.

Exit codes: 0 success; 1 the work failed (unreadable input, corrupt .vqz, missing model,
output exists without --force, I/O error); 2 bad usage (unknown option, bad value).

encode, decode and info take several inputs and folders (a batch: one failed file is
reported as `error: FILE: message` and the rest go on; exit code 1 if any failed), and `-`
for standard input or output. With --json they print one JSON object per file, one per
line, on stdout, or on stderr when `-o -` sends the data itself to stdout. Metadata left out
(malformed in an input, or more than an output format holds) is reported on stderr as
`warning: [FILE: ]message`, and listed under "warnings" in the JSON record.

Modules: app (the `vqcodec` group), batch (files and pipes in, atomic outputs, one-line errors),
coding (encode, decode, info), models (models, generate), evaluation (demo, bench), training
(train, train-prior, train-enhance).
"""
from .app import main

__all__ = ["main"]
