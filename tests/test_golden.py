"""Golden files: .vqz files made by earlier versions must decode to the same pixels, or, when
their model has been replaced, fail with an error naming the missing model."""
import json
from pathlib import Path

import pytest

import vqcodec
from vqcodec import zoo
from vqcodec.nn.autoencoder import fast_bfloat16

from golden.make_golden import pixel_digest

GOLDEN = Path(__file__).parent / "golden"
CASES = json.loads((GOLDEN / "manifest.json").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_golden_file_decodes_to_the_same_pixels(case, monkeypatch):
    data = (GOLDEN / case["file"]).read_bytes()
    if zoo.find_by_hash(case["model_sha256"]) is None:  # the model was replaced: a clear error
        with pytest.raises(vqcodec.VqzError, match=f"model '{case['model']}'.*{case['model_sha256']}.*not installed"):
            vqcodec.decode(data)
        return
    monkeypatch.setenv("VQCODEC_FLOAT32", "1")  # the float32 decode, the same on every machine
    assert pixel_digest(vqcodec.decode(data)) == case["pixels_sha256"]
    monkeypatch.delenv("VQCODEC_FLOAT32")
    if fast_bfloat16():  # this machine decodes in bfloat16 by default
        assert pixel_digest(vqcodec.decode(data)) == case["pixels_sha256_bfloat16"]


def test_every_bundled_model_has_golden_files():
    covered = {c["model_sha256"] for c in CASES}
    assert {m["sha256"] for m in vqcodec.list_models()} <= covered
