"""Golden files: .vqz files made by earlier versions must decode to the same indices and pixels
(version 1: exactly the pixels they always gave; versions 2 and 3: within PIXEL_TOLERANCE levels
of a reference decode) and metadata, or, when their model has been replaced, fail with an error naming
the missing model."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vqcodec
from vqcodec import container, zoo
from vqcodec.fileio import ImageMetadata
from vqcodec.inference import native_bfloat16

from golden.make_golden import PIXEL_TOLERANCE, indices_digest, pixel_digest

GOLDEN = Path(__file__).parent / "golden"
CASES = json.loads((GOLDEN / "manifest.json").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_golden_file_decodes_to_the_same_pixels(case, monkeypatch):
    data = (GOLDEN / case["file"]).read_bytes()
    if zoo.find_by_hash(case["model_sha256"]) is None:  # the model was replaced: a clear error
        # version 1 names the model and its whole sha256; version 2 holds the first 8 bytes only
        named = (f"model '{case['model']}'.*{case['model_sha256']}" if case.get("format_version", 1) == 1
                 else f"sha256 starts with {case['model_sha256'][:16]}")
        with pytest.raises(vqcodec.VqzError, match=f"{named}.*not installed"):
            vqcodec.decode(data)
        return
    assert indices_digest(data) == case["indices_sha256"]  # integers: exact on every machine
    if case.get("format_version", 1) == 1:  # version 1 still decodes to exactly the pixels it gave
        monkeypatch.setenv("VQCODEC_FLOAT32", "1")  # the float32 decode
        assert pixel_digest(vqcodec.decode(data)) == case["pixels_sha256"]
        monkeypatch.delenv("VQCODEC_FLOAT32")
        if native_bfloat16():  # this machine decodes in bfloat16 by default
            assert pixel_digest(vqcodec.decode(data)) == case["pixels_sha256_bfloat16"]
        return
    with Image.open(GOLDEN / case["reference"]) as reference:
        expected = np.asarray(reference).astype(np.int16)
    for float32 in ("1", "0"):  # float32, then the machine's default (bfloat16 where it is native)
        monkeypatch.setenv("VQCODEC_FLOAT32", float32)
        picture = vqcodec.decode(data)
        pixels = np.asarray(picture).astype(np.int16)
        assert pixels.shape == expected.shape
        assert np.abs(pixels - expected).max() <= PIXEL_TOLERANCE
    stored = {kind: hashlib.sha256(value).hexdigest()
              for kind, value in ImageMetadata.from_info(picture.info).items().items()}
    assert stored == case["metadata_sha256"]


def test_every_bundled_model_has_golden_files_of_the_version_written():
    """Version 2 is the one written (version 3 when a file has a colour correction, which the
    default model's files at low levels do); models made before it (photo) also keep their
    version-1 files, which the test above decodes; a model made since (digits, 8 stages) cannot
    have any."""
    covered = {c["model_sha256"] for c in CASES if c.get("format_version", 1) == 2}
    assert {m["sha256"] for m in vqcodec.list_models()} <= covered
    assert any(c.get("format_version", 1) == 1 for c in CASES)
    default = next(m for m in vqcodec.list_models() if m["default"])
    degrees = {container.unpack((GOLDEN / c["file"]).read_bytes()).correction[0]
               for c in CASES if c["model_sha256"] == default["sha256"] and c.get("format_version") == 3}
    assert degrees == {1, 2}  # a colour correction of each degree


def test_golden_files_cover_range_payloads_with_a_cut_short_last_word():
    lengths = {path.name: len(container.unpack(path.read_bytes()).index_payload)
               for path in GOLDEN.glob("v2_*_prior.vqz")}
    assert any(length % 4 for length in lengths.values()), lengths
    assert any(length % 4 == 0 for length in lengths.values()), lengths  # the whole-word payloads of before
