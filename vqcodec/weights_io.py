"""Weights files: safetensors tensors plus JSON configs in the metadata. No pickle.

A weights file carries everything needed to rebuild its model:
    metadata["format"]       "vqcodec-weights-1"
    metadata["name"]         model name, e.g. "photo"
    metadata["description"]  one line for `vqcodec models`
    metadata["model_config"] ModelConfig as JSON
    metadata["train_config"] TrainConfig as JSON (for the record)
    metadata["training"]     JSON facts about the run (steps, wall time, data)
and, once a prior is trained for the model (vqcodec train-prior):
    metadata["prior_config"]   PriorConfig as JSON
    metadata["prior_training"] JSON facts about the prior's run
    tensors "prior.*"          the integer prior (IntegerPrior.tensors()), int32
and, once an enhancement layer is trained over it (vqcodec train-enhance):
    metadata["enhance_config"]   EnhanceConfig as JSON
    metadata["enhance_training"] JSON facts about the layer's run
    tensors "enhance.*"          the layer (nn.enhance.EnhanceLayer), float32
and its own prior over the layer's index grids (vqcodec train-prior --layer enhance):
    metadata["enhance_prior_config"], metadata["enhance_prior_training"], tensors "enhance_prior.*"

A hierarchical model (nn.hierarchy, `vqcodec train --config configs/photo.json`) has instead:
    metadata["hierarchy_config"] HierarchyConfig as JSON
    metadata["prior_configs"]    JSON list of one PriorConfig per level
    metadata["training"]         JSON facts about every phase's run
    tensors "hierarchy.*"        the autoencoder, float32
    tensors "prior<level>.*"     the integer prior of each level, int32
and, once its priors were trained again (save_with_earlier_priors), the ones files made before
still decode with, one set per release of other priors:
    metadata["earlier_priors"]   JSON list of {"files": [sha256 of the weights files whose files
                                 each set decodes], "prior_configs": [...]}
    tensors "earlier<k>.prior<level>.*"  set k's level priors, int32
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import torch
from safetensors.torch import load as load_tensors_from_bytes
from safetensors.torch import save as save_tensors_to_bytes

from .fileio import atomic_write_bytes
from .config import EnhanceConfig, HierarchyConfig, ModelConfig, PriorConfig, from_dict, to_json
from .nn.autoencoder import VQVAE
from .nn.enhance import EnhanceLayer
from .nn.hierarchy import HierarchicalVQ
from .nn.prior import IntegerPrior

ENHANCE_PREFIX = "enhance."
HIERARCHY_PREFIX = "hierarchy."
# layer -> (tensor prefix, metadata key prefix) of the prior over that layer's indices
PRIOR_KEYS = {"base": ("prior.", "prior_"), "enhance": ("enhance_prior.", "enhance_prior_")}
NOT_VQVAE = tuple(prefix for prefix, _ in PRIOR_KEYS.values()) + (ENHANCE_PREFIX,)

WEIGHTS_FORMAT = "vqcodec-weights-1"
MAX_HEADER_BYTES = 1 << 24


def sha256_of_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _trained_tensors(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors a weights file keeps (not the codebooks' EMA training state)."""
    return {prefix + k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()
            if not k.endswith((".ema_sum", ".initialized"))}


def save_weights(model: VQVAE, path: str | os.PathLike, *, name: str, description: str,
                 train_config=None, training: dict | None = None) -> str:
    """Write the model as safetensors (atomically); return the file's sha256."""
    tensors = _trained_tensors(model)
    metadata = {
        "format": WEIGHTS_FORMAT,
        "name": name,
        "description": description,
        "model_config": to_json(model.config),
        "train_config": to_json(train_config) if train_config is not None else "null",
        "training": json.dumps(training or {}, sort_keys=True),
    }
    atomic_write_bytes(path, save_tensors_to_bytes(tensors, metadata=metadata))
    return sha256_of_file(path)


def save_with_prior(source: str | os.PathLike, path: str | os.PathLike, prior: IntegerPrior,
                    prior_config: PriorConfig, prior_training: dict, layer: str = "base") -> str:
    """Copy the weights in `source` to `path` with `prior` added as the prior over `layer`'s
    indices ("base" or "enhance"), replacing any earlier one, atomically; return the sha256."""
    tensor_prefix, key_prefix = PRIOR_KEYS[layer]
    with open(source, "rb") as f:
        data = f.read()
    metadata = metadata_from_bytes(data, str(source))
    tensors = {k: v for k, v in load_tensors_from_bytes(data).items() if not k.startswith(tensor_prefix)}
    tensors.update({tensor_prefix + k: v.contiguous() for k, v in prior.tensors().items()})
    metadata = {**metadata, key_prefix + "config": to_json(prior_config),
                key_prefix + "training": json.dumps(prior_training, sort_keys=True)}
    atomic_write_bytes(path, save_tensors_to_bytes(tensors, metadata=metadata), overwrite=True)
    return sha256_of_file(path)


def save_with_encoder_settings(source: str | os.PathLike, path: str | os.PathLike, description: str | None = None,
                               **settings) -> str:
    """Copy the hierarchical model in `source` to `path` with other encoder settings (fields of
    HierarchyConfig.ENCODER_SETTINGS, such as the quality ladder), atomically; return the sha256.
    The tensors, priors and training records stay as they were, so every file the source made
    decodes with the copy exactly: its metadata lists the source's sha256 (after those the
    source listed) as "decodes_files_of", which zoo.register puts in the manifest.
    description: a new one (None: the source's)."""
    with open(source, "rb") as f:
        data = f.read()
    metadata = metadata_from_bytes(data, str(source))
    if not is_hierarchy(metadata):
        raise ValueError(f"{source} is not a hierarchical model: it has no encoder settings")
    config = from_dict(HierarchyConfig, json.loads(metadata["hierarchy_config"])).with_encoder_settings(**settings)
    earlier = json.loads(metadata.get("decodes_files_of", "[]")) + [hashlib.sha256(data).hexdigest()]
    metadata = {**metadata, "hierarchy_config": to_json(config), "decodes_files_of": json.dumps(earlier),
                "description": metadata["description"] if description is None else description}
    atomic_write_bytes(path, save_tensors_to_bytes(load_tensors_from_bytes(data), metadata=metadata), overwrite=True)
    return sha256_of_file(path)


def save_with_enhance(source: str | os.PathLike, path: str | os.PathLike, layer: EnhanceLayer,
                      training: dict, description: str | None = None) -> str:
    """Copy the model (and prior) in `source` to `path` with enhancement `layer` added
    (replacing any earlier one, and the prior over its indices), and `description` if given,
    atomically; return the sha256."""
    tensor_prefix, key_prefix = PRIOR_KEYS["enhance"]
    with open(source, "rb") as f:
        data = f.read()
    metadata = {k: v for k, v in metadata_from_bytes(data, str(source)).items() if not k.startswith(key_prefix)}
    tensors = {k: v for k, v in load_tensors_from_bytes(data).items()
               if not k.startswith((ENHANCE_PREFIX, tensor_prefix))}
    tensors.update(_trained_tensors(layer, ENHANCE_PREFIX))
    if description is not None:
        metadata["description"] = description
    metadata = {**metadata, "enhance_config": to_json(layer.config),
                "enhance_training": json.dumps(training, sort_keys=True)}
    atomic_write_bytes(path, save_tensors_to_bytes(tensors, metadata=metadata), overwrite=True)
    return sha256_of_file(path)


def metadata_from_bytes(data: bytes, origin: str = "weights") -> dict:
    """The metadata of a weights file from its bytes (read_metadata reads only a file's header)."""
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    if not 0 < size <= min(MAX_HEADER_BYTES, len(data) - 8):
        raise ValueError(f"{origin} is not a safetensors file")
    return _metadata_from_header(data[8:8 + size], origin)


def _metadata_from_header(header: bytes, origin: str) -> dict:
    try:
        metadata = json.loads(header).get("__metadata__") or {}
    except (ValueError, AttributeError):
        metadata = {}
    if metadata.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{origin} is not a vqcodec weights file (format {metadata.get('format')!r})")
    return metadata


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata of a weights file, reading only its safetensors header."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        size = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
        if not 0 < size <= MAX_HEADER_BYTES:
            raise ValueError(f"{path} is not a safetensors file")
        return _metadata_from_header(f.read(size), str(path))


def vqvae_from_bytes(data: bytes, origin: str = "weights") -> VQVAE:
    """Rebuild a VQVAE from the bytes of its weights file (safetensors only, never pickle)."""
    metadata = metadata_from_bytes(data, origin)
    config: ModelConfig = from_dict(ModelConfig, json.loads(metadata["model_config"]))
    model = VQVAE(config)
    tensors = {k: v for k, v in load_tensors_from_bytes(data).items() if not k.startswith(NOT_VQVAE)}
    return _load_trained(model, tensors, origin)


def _load_trained(model: VQVAE | EnhanceLayer, tensors: dict, origin: str):
    """`model` with `tensors` loaded (all of them, and no others), ready for inference."""
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    allowed_missing = {k for k in missing if k.endswith((".ema_sum", ".initialized"))}
    if set(missing) - allowed_missing or unexpected:
        raise ValueError(f"{origin}: tensors do not match the config "
                         f"(missing {sorted(set(missing) - allowed_missing)}, unexpected {unexpected})")
    for stage in model.quantizer.stages:
        stage.initialized.fill_(True)
    model.eval()
    return model.to(memory_format=torch.channels_last)  # about 20 % faster convolutions on CPU


def enhance_from_bytes(data: bytes, origin: str = "weights") -> EnhanceLayer | None:
    """The enhancement layer stored with a model, or None if the file has none."""
    metadata = metadata_from_bytes(data, origin)
    if "enhance_config" not in metadata:
        return None
    config: EnhanceConfig = from_dict(EnhanceConfig, json.loads(metadata["enhance_config"]))
    tensors = {k[len(ENHANCE_PREFIX):]: v for k, v in load_tensors_from_bytes(data).items()
               if k.startswith(ENHANCE_PREFIX)}
    return _load_trained(EnhanceLayer(config), tensors, origin)


def prior_from_bytes(data: bytes, origin: str = "weights", layer: str = "base") -> IntegerPrior | None:
    """The integer prior over `layer`'s indices ("base" or "enhance") stored with a model, or
    None if the file has none."""
    tensor_prefix, key_prefix = PRIOR_KEYS[layer]
    metadata = metadata_from_bytes(data, origin)
    if key_prefix + "config" not in metadata:
        return None
    config = from_dict(PriorConfig, json.loads(metadata[key_prefix + "config"]))
    # the prior states the shape of the grids it codes; that is the layer's, never its own choice
    layer_key, layer_class = {"base": ("model_config", ModelConfig), "enhance": ("enhance_config", EnhanceConfig)}[layer]
    if layer_key in metadata:
        coded = from_dict(layer_class, json.loads(metadata[layer_key]))
        if (config.num_stages, config.codebook_size) != (coded.num_stages, coded.codebook_size):
            raise ValueError(f"{origin}: the {layer} prior codes {config.num_stages} stages of {config.codebook_size} "
                             f"codes, but the layer has {coded.num_stages} of {coded.codebook_size}")
    tensors = {k[len(tensor_prefix):]: v for k, v in load_tensors_from_bytes(data).items()
               if k.startswith(tensor_prefix)}
    if any(t.dtype != torch.int32 for t in tensors.values()):
        raise ValueError(f"{origin}: prior tensors must be int32")
    return IntegerPrior(config, tensors)


def load_vqvae(path: str | os.PathLike) -> VQVAE:
    with open(path, "rb") as f:
        return vqvae_from_bytes(f.read(), str(path))


def is_hierarchy(metadata: dict) -> bool:
    return "hierarchy_config" in metadata


def save_hierarchy(path: str | os.PathLike, model: HierarchicalVQ, priors: list[IntegerPrior], *, name: str,
                   description: str, training: dict) -> str:
    """Write a hierarchical model and its level priors as one weights file; return its sha256."""
    tensors = {HIERARCHY_PREFIX + k: v for k, v in _trained_tensors(model).items()
               if not k.endswith(".ema_count")}
    for level, prior in enumerate(priors):
        tensors.update({f"prior{level}.{k}": v.contiguous() for k, v in prior.tensors().items()})
    metadata = {"format": WEIGHTS_FORMAT, "name": name, "description": description,
                "hierarchy_config": to_json(model.config),
                "prior_configs": json.dumps([dataclasses.asdict(p.config) for p in priors], sort_keys=True),
                "training": json.dumps(training, sort_keys=True)}
    atomic_write_bytes(path, save_tensors_to_bytes(tensors, metadata=metadata))
    return sha256_of_file(path)


def hierarchy_from_bytes(data: bytes, origin: str = "weights"):
    """A hierarchical model, its level priors and its earlier prior sets from the bytes of their
    weights file: (HierarchicalVQ, [IntegerPrior per level], {sha256: [IntegerPrior per level]}
    for the files each earlier set decodes)."""
    metadata = metadata_from_bytes(data, origin)
    config = from_dict(HierarchyConfig, json.loads(metadata["hierarchy_config"]))
    tensors = load_tensors_from_bytes(data)
    model = HierarchicalVQ(config)
    own = {k[len(HIERARCHY_PREFIX):]: v for k, v in tensors.items() if k.startswith(HIERARCHY_PREFIX)}
    missing, unexpected = model.load_state_dict(own, strict=False)
    missing = [k for k in missing if not k.endswith((".ema_sum", ".ema_count", ".initialized"))]
    if missing or unexpected:
        raise ValueError(f"{origin}: tensors do not match the config (missing {missing}, unexpected {unexpected})")
    configs = json.loads(metadata["prior_configs"])
    earlier_sets = json.loads(metadata.get("earlier_priors", "[]"))
    for set_configs in (configs, *(prior_set["prior_configs"] for prior_set in earlier_sets)):
        if len(set_configs) != len(config.level_strides):
            raise ValueError(f"{origin}: {len(set_configs)} priors for {len(config.level_strides)} levels")
    priors = level_priors(tensors, configs, origin=origin)
    earlier = {}
    for k, prior_set in enumerate(earlier_sets):
        set_priors = level_priors(tensors, prior_set["prior_configs"], f"earlier{k}.", origin)
        earlier.update({sha256: set_priors for sha256 in prior_set["files"]})
    return model.eval(), priors, earlier


def level_priors(tensors: dict, configs: list, prefix: str = "", origin: str = "weights") -> list[IntegerPrior]:
    """The level priors stored as "<prefix>prior<level>.*" (int32), one per config (JSON dicts)."""
    priors = []
    for level, raw in enumerate(configs):
        name = f"{prefix}prior{level}."
        prior_tensors = {k[len(name):]: v for k, v in tensors.items() if k.startswith(name)}
        if any(t.dtype != torch.int32 for t in prior_tensors.values()):
            raise ValueError(f"{origin}: prior tensors must be int32")
        priors.append(IntegerPrior(from_dict(PriorConfig, raw), prior_tensors))
    return priors


def save_with_earlier_priors(source: str | os.PathLike, earlier: str | os.PathLike, path: str | os.PathLike) -> str:
    """Copy the hierarchical model in `source` to `path`, atomically, with the level priors of
    `earlier` (a weights file of the very same networks whose priors were since trained again)
    kept as an earlier set, so the files `earlier` made, and those it decoded exactly, decode
    with the copy exactly; `earlier`'s own earlier sets come along. Their sha256s go to
    "decodes_files_of" (zoo.register puts them in the manifest). Returns the copy's sha256."""
    with open(source, "rb") as f:
        data = f.read()
    with open(earlier, "rb") as f:
        earlier_data = f.read()
    metadata, earlier_metadata = metadata_from_bytes(data, str(source)), metadata_from_bytes(earlier_data, str(earlier))
    if not (is_hierarchy(metadata) and is_hierarchy(earlier_metadata)):
        raise ValueError("both weights files must hold hierarchical models")
    tensors, earlier_tensors = load_tensors_from_bytes(data), load_tensors_from_bytes(earlier_data)
    networks = {k for k in tensors if k.startswith(HIERARCHY_PREFIX)}
    if networks != {k for k in earlier_tensors if k.startswith(HIERARCHY_PREFIX)} or not all(
            torch.equal(tensors[k], earlier_tensors[k]) for k in networks):
        raise ValueError(f"{earlier} does not hold the networks of {source}: its files would not decode")
    sets = json.loads(earlier_metadata.get("earlier_priors", "[]"))
    carried = {file for prior_set in sets for file in prior_set["files"]}
    files = [file for file in json.loads(earlier_metadata.get("decodes_files_of", "[]")) if file not in carried]
    sets.append({"files": files + [hashlib.sha256(earlier_data).hexdigest()],
                 "prior_configs": json.loads(earlier_metadata["prior_configs"])})
    tensors = {k: v for k, v in tensors.items() if not k.startswith("earlier")}
    for k, prior_set in enumerate(sets):
        name = "" if k == len(sets) - 1 else f"earlier{k}."  # the newest set: the earlier file's own priors
        tensors.update({f"earlier{k}.{key[len(name):]}": value for key, value in earlier_tensors.items()
                        if key.startswith(name + "prior")})
    metadata = {**metadata, "earlier_priors": json.dumps(sets, sort_keys=True),
                "decodes_files_of": json.dumps([file for prior_set in sets for file in prior_set["files"]])}
    atomic_write_bytes(path, save_tensors_to_bytes(tensors, metadata=metadata), overwrite=True)
    return sha256_of_file(path)
