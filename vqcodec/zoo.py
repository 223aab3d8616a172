"""Bundled models: name -> weights file + sha256, read from a manifest.

Each weights folder holds `models.json`:
    {"models": [{"name": "photo", "file": "photo.safetensors", "sha256": "...",
                 "description": "...", "default": true}, ...]}
An entry may list "decodes_base_of": the sha256 of the file its enhancement layer was trained
over, whose base model and prior it carries unchanged, so files that file made still decode;
and "decodes_files_of": the sha256s of earlier files with the very same networks, whose files it
decodes exactly as they did: only encoder settings, such as the quality ladder, changed
(weights_io.save_with_encoder_settings), or the priors were trained again and the earlier ones
came along for those files (weights_io.save_with_earlier_priors, load_hierarchy's made_by).
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

from . import quality
from .config import HierarchyConfig, from_dict
from .container import CODERS
from .fileio import atomic_write_bytes
from .weights_io import (enhance_from_bytes, hierarchy_from_bytes, is_hierarchy, metadata_from_bytes,
                         prior_from_bytes, read_metadata, sha256_of_file, vqvae_from_bytes)

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
    # files made by this earlier weights file decode with this one at its base levels (its base
    # model and prior are carried here unchanged; an enhancement layer was added)
    decodes_base_of: str | None = None
    # files made by these earlier weights files decode with this one exactly (the same networks;
    # other encoder settings, such as the quality ladder, or the priors they were coded with kept)
    decodes_files_of: tuple[str, ...] = ()

    def decodes_exactly(self, prefix: str) -> bool:
        """Whether files that name a model by this sha256 prefix decode with this one exactly."""
        return any(sha256.startswith(prefix) for sha256 in (self.sha256, *self.decodes_files_of))

    def info(self) -> dict:
        """The public description (same fields as `vqcodec models --json`)."""
        metadata = read_metadata(self.path)
        if is_hierarchy(metadata):
            config = json.loads(metadata["hierarchy_config"])
            levels = from_dict(HierarchyConfig, config).quality_levels()
            stride, has_prior = max(config["level_strides"]), "prior_configs" in metadata
            default = quality.default_quality(levels.count)
            enhancement_levels: list[int] = []
        else:
            config = json.loads(metadata["model_config"])
            enhance = json.loads(metadata.get("enhance_config", "null")) or {}
            levels = quality.levels(config["num_stages"], enhance.get("num_stages", 0), enhance.get("base_stages", 0))
            stride, has_prior = 2 ** len(config["widths"]), "prior_config" in metadata
            default = quality.default_quality(config["num_stages"])
            # levels above the base level add the enhancement layer (nn/enhance.py) to it
            enhancement_levels = list(range(levels.base + 1, levels.count + 1))
        return {
            "name": self.name,
            "sha256": self.sha256,
            "quality_levels": list(range(1, levels.count + 1)),
            "enhancement_levels": enhancement_levels,
            "default_quality": default,
            "default": self.default,
            "description": self.description,
            "stride": stride,
            "codebook_size": config["codebook_size"],
            "coders": sorted(c for c in CODERS if c != "prior" or has_prior),
            "sample_temperature": json.loads(metadata.get("prior_training", "{}")).get("sample_temperature"),
            # class-conditional priors (digits): how many classes, and the default guidance of generate
            "sample_classes": json.loads(metadata.get("prior_config", "{}")).get("num_classes") or None,
            "sample_guidance": json.loads(metadata.get("prior_training", "{}")).get("sample_guidance"),
            "file": str(self.path),
        }


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
                           bool(m.get("default", False)), m.get("decodes_base_of"),
                           tuple(str(sha256) for sha256 in m.get("decodes_files_of", ()))) for m in data["models"]]
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
    """The model whose file has this sha256 or decodes that file's files exactly
    (entry.decodes_files_of), else the one that carries that file's base model and prior
    unchanged (entry.decodes_base_of), else None."""
    return find_by_prefix(sha256)


def find_by_prefix(prefix: str) -> ModelEntry | None:
    """find_by_hash for the leading hex digits of a sha256 (a version-2 .vqz names its model
    by 8 bytes of it): the model whose file's sha256 starts with `prefix` or that decodes such
    a file's files exactly, else the one that carries such a file's base model and prior,
    else None. Raises ModelError if two different files match."""
    available = entries()
    for matches in ([e for e in available if e.decodes_exactly(prefix)],
                    [e for e in available if e.decodes_base_of and e.decodes_base_of.startswith(prefix)]):
        if len({e.sha256 for e in matches}) > 1:
            raise ModelError(f"model sha256 prefix {prefix} is ambiguous: it matches "
                             + ", ".join(f"'{e.name}' ({e.sha256})" for e in matches))
        if matches:
            return matches[0]
    return None


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
        if is_hierarchy(metadata_from_bytes(data, str(path))):  # the bytes just checked, not the file again
            return (None, None, None, None, hierarchy_from_bytes(data, str(path)))
        return (vqvae_from_bytes(data, str(path)), prior_from_bytes(data, str(path)),
                enhance_from_bytes(data, str(path)), prior_from_bytes(data, str(path), layer="enhance"), None)
    except Exception as error:  # a malformed file must not surface as a raw traceback
        raise ModelError(f"cannot load weights {path}: {error}") from None


def load(entry: ModelEntry):
    """The VQVAE of `entry`, after checking the file's sha256 (cached per process); None for a
    hierarchical model (load_hierarchy)."""
    return _load_checked(entry.path, entry.sha256)[0]


def load_hierarchy(entry: ModelEntry, made_by: str | None = None):
    """(HierarchicalVQ, one IntegerPrior per level) of a hierarchical model (nn.hierarchy),
    else None. made_by: the sha256 (or a prefix of it) of the model that made the files to be
    decoded; the level priors are then those its files were coded with (an earlier set, see
    weights_io.save_with_earlier_priors, where the priors were trained again since)."""
    loaded = _load_checked(entry.path, entry.sha256)[4]
    if loaded is None:
        return None
    model, priors, earlier = loaded
    if made_by is not None:
        priors = next((level_priors for sha256, level_priors in earlier.items() if sha256.startswith(made_by)), priors)
    return model, priors


def load_prior(entry: ModelEntry):
    """The IntegerPrior stored with `entry` (same sha256-checked file), or None."""
    return _load_checked(entry.path, entry.sha256)[1]


def load_enhance(entry: ModelEntry):
    """The enhancement layer stored with `entry` (same sha256-checked file), or None."""
    return _load_checked(entry.path, entry.sha256)[2]


def load_enhance_prior(entry: ModelEntry):
    """The IntegerPrior over the enhancement layer's indices stored with `entry`, or None."""
    return _load_checked(entry.path, entry.sha256)[3]


def levels_of(vqvae, enhance) -> quality.Levels:
    """The quality levels of a base model and its enhancement layer (None: none)."""
    if enhance is None:
        return quality.levels(vqvae.config.num_stages)
    return quality.levels(vqvae.config.num_stages, enhance.config.num_stages, enhance.config.base_stages)


def register(weights_path: str | os.PathLike, *, default: bool = False) -> ModelEntry:
    """Add (or update) a weights file in the manifest of its folder."""
    weights_path = Path(weights_path)
    metadata = read_metadata(weights_path)
    base = json.loads(metadata.get("enhance_training", "{}")).get("base_weights_sha256")
    same_networks = tuple(json.loads(metadata.get("decodes_files_of", "[]")))
    entry = ModelEntry(metadata["name"], weights_path, sha256_of_file(weights_path),
                       metadata["description"], default, base, same_networks)
    manifest = weights_path.parent / MANIFEST
    models = json.loads(manifest.read_text())["models"] if manifest.is_file() else []
    models = [m for m in models if m["name"] != entry.name]
    if default:
        for m in models:
            m["default"] = False
    models.append({"name": entry.name, "file": weights_path.name, "sha256": entry.sha256,
                   "description": entry.description, "default": default,
                   **({"decodes_base_of": base} if base else {}),
                   **({"decodes_files_of": list(same_networks)} if same_networks else {})})
    models.sort(key=lambda m: m["name"])
    atomic_write_bytes(manifest, (json.dumps({"models": models}, indent=2) + "\n").encode())
    return entry
