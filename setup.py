"""Everything but the weights is in setup.cfg. The wheel ships exactly the weights files that
weights/models.json names, so a registered model cannot be left out and an unregistered file
(a probe, a checkpoint) is not shipped; they go to <prefix>/share/vqcodec/weights, where
zoo.weights_dirs() looks. tests/test_packaging.py checks the built wheel."""
import json
from pathlib import Path

from setuptools import setup

manifest = json.loads((Path(__file__).resolve().parent / "weights" / "models.json").read_text())
setup(data_files=[("share/vqcodec/weights", ["weights/models.json"] + [f"weights/{m['file']}" for m in manifest["models"]])])
