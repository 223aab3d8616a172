"""Bit-exact decoding: the decoder derives exactly the encoder's probabilities, whatever the
process, thread count or batch, so files decode to the same indices everywhere."""
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import vqcodec
from vqcodec import codec, zoo
from vqcodec.cli import main

from conftest import installed_model, photo_crop

pytestmark = pytest.mark.slow  # other processes: python -c, --jobs

# the bundled models, from the manifests alone (a model without a prior is skipped in the test)
MODELS = [entry.name for entry in zoo.entries()]

ENCODE = """
import sys, torch, numpy as np, vqcodec
torch.set_num_threads(int(sys.argv[1]))
pixels = np.load(sys.argv[2])
sys.stdout.buffer.write(vqcodec.encode(pixels, quality=int(sys.argv[3]), model=sys.argv[4], coder="prior"))
"""
DECODE = """
import sys, json, torch, numpy as np, vqcodec
from vqcodec import codec
torch.set_num_threads(int(sys.argv[1]))
data = open(sys.argv[2], "rb").read()
grids = [g for layer in codec.read_indices(data).layers for g in layer.indices]
pixels = np.asarray(vqcodec.decode(data))
print(json.dumps({"indices": [g.tolist() for g in grids], "pixels": pixels.tolist()}))
"""


def run(script: str, *args) -> bytes:
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], check=True, capture_output=True).stdout


@pytest.fixture(scope="module")
def picture(photo):
    return photo_crop(photo, 36, 28)  # small: the digits model codes position by position


@pytest.fixture
def model(request) -> str:
    """The name of a bundled model with a prior (skips a model that is not installed or has none)."""
    info = installed_model(request.param).info()
    if "prior" not in info["coders"]:
        pytest.skip(f"model '{info['name']}' has no prior")
    return info["name"]


@pytest.mark.parametrize("model", MODELS, indirect=True)
def test_encode_with_one_thread_decode_with_two_in_other_processes(tmp_path, picture, model):
    top = max(zoo.find(model).info()["quality_levels"])
    np.save(tmp_path / "pixels.npy", picture)
    one = run(ENCODE, 1, tmp_path / "pixels.npy", top, model)
    two = run(ENCODE, 2, tmp_path / "pixels.npy", top, model)
    assert one == two  # the same bytes from either thread count
    (tmp_path / "a.vqz").write_bytes(one)
    here = [g for layer in codec.read_indices(one).layers for g in layer.indices]
    for threads in (1, 2):
        there = json.loads(run(DECODE, threads, tmp_path / "a.vqz"))
        assert len(there["indices"]) == len(here)
        assert all(np.array_equal(np.array(g), h) for g, h in zip(there["indices"], here))
        assert np.array_equal(np.array(there["pixels"], dtype=np.uint8), np.asarray(vqcodec.decode(one)))


@pytest.mark.parametrize("model", MODELS, indirect=True)
def test_alone_or_in_a_batch_or_repeated_gives_the_same_bytes(tmp_path, photo, model):
    pictures = [photo_crop(photo, 20 + 8 * i, 16 + 4 * i) for i in range(3)]
    alone = [vqcodec.encode(p, model=model, coder="prior") for p in pictures]
    assert alone == [vqcodec.encode(p, model=model, coder="prior") for p in pictures]
    from PIL import Image
    for i, p in enumerate(pictures):
        Image.fromarray(p).save(tmp_path / f"{i}.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["encode", *(str(tmp_path / f"{i}.png") for i in range(3)),
                                       "-o", str(out), "--model", model, "--coder", "prior", "--jobs", "2"])
    assert result.exit_code == 0, result.output
    assert [(out / f"{i}.vqz").read_bytes() for i in range(3)] == alone
