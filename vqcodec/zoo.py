"""Bundled models: name -> weights file + sha256, read from a manifest.

Each weights folder holds `models.json`:
    {"models": [{"name": "photo", "file": "photo.safetensors", "sha256": "...",
                 "description": "...", "default": true}, ...]}
Folders searched, first match wins: $VQCODEC_WEIGHTS (os.pathsep-separated),
the source checkout's weights/, and <sys.prefix>/share/vqcodec/weights (wheel installs).
A file's sha256 must equal the manifest's before a byte of it is parsed, and
only safetensors is read (weights_io), never pickle.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .fileio import atomic_write_bytes
from .weights_io import read_metadata, sha256_of_file, prior_from_bytes, vqvae_from_bytes

MANIFEST = "models.json"


class ModelError(ValueError):
    """A model that is unknown, missing, or whose weights fail their checks."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    sha256: str
    description: str
    default: bool

    def info(self) -> dict:
        """The public description (same fields as `vqcodec models --json`)."""
        metadata = read_metadata(self.path)
        config = json.loads(metadata["model_config"])
        return {
            "name": self.name,
            "sha256": self.sha256,
            "quality_levels": list(range(1, config["num_stages"] + 1)),
            "default_quality": default_quality(config["num_stages"]),
            "default": self.default,
            "description": self.description,
            "stride": 2 ** len(config["widths"]),
            "codebook_size": config["codebook_size"],
            "coders": ["prior", "zstd"] if "prior_config" in metadata else ["zstd"],
            "sample_temperature": json.loads(metadata.get("prior_training", "{}")).get("sample_temperature"),
            "file": str(self.path),
        }


def default_quality(num_stages: int) -> int:
    """The level used when none is asked for: half of the stages, rounded up."""
    return (num_stages + 1) // 2


def weights_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("VQCODEC_WEIGHTS", "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parent.parent / "weights")
    dirs.append(Path(sys.prefix) / "share" / "vqcodec" / "weights")
    return dirs


def read_manifest(folder: Path) -> list[ModelEntry]:
    path = folder / MANIFEST
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
        return [ModelEntry(m["name"], folder / m["file"], m["sha256"], m.get("description", ""),
                           bool(m.get("default", False))) for m in data["models"]]
    except (ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{path} is not a valid model manifest ({error})") from None


def entries() -> list[ModelEntry]:
    """All installed models, the first folder's entry winning for each name."""
    found: dict[str, ModelEntry] = {}
    for folder in weights_dirs():
        for entry in read_manifest(folder):
            found.setdefault(entry.name, entry)
    return list(found.values())


def find(name: str | None = None) -> ModelEntry:
    """The entry called `name`, or the default model when name is None."""
    available = entries()
    if not available:
        raise ModelError("no models are installed (looked in: "
                         + ", ".join(str(d) for d in weights_dirs()) + ")")
    if name is None:
        defaults = [e for e in available if e.default] or available
        return defaults[0]
    for entry in available:
        if entry.name == name:
            return entry
    raise ModelError(f"unknown model '{name}'; installed: {', '.join(e.name for e in available)}")


def find_by_hash(sha256: str) -> ModelEntry | None:
    return next((e for e in entries() if e.sha256 == sha256), None)


def list_models() -> list[dict]:
    return [entry.info() for entry in entries()]


@functools.lru_cache(maxsize=4)
def _load_checked(path: Path, sha256: str):
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelError(f"cannot read weights file {path}: {error.strerror}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ModelError(f"weights file {path} has sha256 {actual}, but the manifest says {sha256}: "
                         "the file is damaged or was replaced; refusing to load it")
    try:
        return vqvae_from_bytes(data, str(path)), prior_from_bytes(data, str(path))
    except Exception as error:  # a malformed file must not surface as a raw traceback
        raise ModelError(f"cannot load weights {path}: {error}") from None


def load(entry: ModelEntry):
    """The VQVAE of `entry`, after checking the file's sha256 (cached per process)."""
    return _load_checked(entry.path, entry.sha256)[0]


def load_prior(entry: ModelEntry):
    """The IntegerPrior stored with `entry` (same sha256-checked file), or None."""
    return _load_checked(entry.path, entry.sha256)[1]


def register(weights_path: str | os.PathLike, *, default: bool = False) -> ModelEntry:
    """Add (or update) a weights file in the manifest of its folder."""
    weights_path = Path(weights_path)
    metadata = read_metadata(weights_path)
    entry = ModelEntry(metadata["name"], weights_path, sha256_of_file(weights_path),
                       metadata["description"], default)
    manifest = weights_path.parent / MANIFEST
    models = json.loads(manifest.read_text())["models"] if manifest.is_file() else []
    models = [m for m in models if m["name"] != entry.name]
    if default:
        for m in models:
            m["default"] = False
    models.append({"name": entry.name, "file": weights_path.name, "sha256": entry.sha256,
                   "description": entry.description, "default": default})
    models.sort(key=lambda m: m["name"])
    atomic_write_bytes(manifest, (json.dumps({"models": models}, indent=2) + "\n").encode())
    return entry
