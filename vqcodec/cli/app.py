"""The `vqcodec` command group: the commands of the other cli modules under one name."""
from __future__ import annotations

import click

from .. import __version__
from ..allocator import keep_freed_memory
from . import coding, evaluation, models, training

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
    keep_freed_memory()  # before any coding: fewer page faults, faster passes


for _command in (coding.encode, coding.decode, coding.info, models.models, models.generate, evaluation.demo,
                 evaluation.bench, training.train, training.train_prior, training.train_enhance):
    main.add_command(_command)
