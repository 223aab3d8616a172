import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vqcodec import images


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    """The 256x256 sample photo shipped with the package."""
    return images.load_image(images.sample_image_path())


def photo_crop(photo: Image.Image, width: int, height: int) -> np.ndarray:
    """A width x height RGB crop of the sample photo (tiled if larger)."""
    arr = np.asarray(photo)
    reps = (-(-height // arr.shape[0]), -(-width // arr.shape[1]), 1)
    return np.ascontiguousarray(np.tile(arr, reps)[:height, :width])


@pytest.fixture
def runner() -> CliRunner:
    """A click test runner for the CLI tests."""
    return CliRunner()
