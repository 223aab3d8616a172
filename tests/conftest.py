import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vqcodec import images, zoo


def installed_model(name: str | None = None) -> zoo.ModelEntry:
    """The zoo entry of a bundled model (default: the default model); the test is skipped when the
    model is not installed (not in any manifest, or its weights file absent). A manifest that
    cannot be read still fails."""
    if not zoo.entries():
        pytest.skip("no models are installed")
    try:
        entry = zoo.find(name)
    except zoo.ModelError as error:
        pytest.skip(str(error))
    if not entry.path.is_file():
        pytest.skip(f"the weights of model '{entry.name}' are not installed ({entry.path})")
    return entry


@pytest.fixture(scope="session")
def default_model() -> zoo.ModelEntry:
    """The default model's zoo entry (skips when it is not installed)."""
    return installed_model()


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    """The 256x256 sample photo shipped with the package."""
    return images.load_image(images.sample_image_path())


def photo_crop(photo: Image.Image, width: int, height: int) -> np.ndarray:
    """A width x height RGB crop of the sample photo (tiled if larger)."""
    arr = np.asarray(photo)
    reps = (-(-height // arr.shape[0]), -(-width // arr.shape[1]), 1)
    return np.ascontiguousarray(np.tile(arr, reps)[:height, :width])


@contextlib.contextmanager
def killed_at_step(task: type, step: int = 3) -> Iterator[None]:
    """Within the block, a training task's class raises KeyboardInterrupt (a kill) when the loop
    asks it for step `step`'s loss; its batch_loss is back after the block."""
    batch_loss = task.batch_loss

    def killed(self, at, generator):
        if at == step:
            raise KeyboardInterrupt
        return batch_loss(self, at, generator)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(task, "batch_loss", killed)
        yield


@pytest.fixture
def runner() -> CliRunner:
    """A click test runner for the CLI tests."""
    return CliRunner()
