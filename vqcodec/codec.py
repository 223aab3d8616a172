"""The one place that joins image I/O, model, prior, entropy coder and container.

    encode: image ─images.load_image_with_metadata─> RGB (+ alpha, ICC/EXIF/XMP)
            ─pad to the model's padding─> quality ─Levels.stages─> layers [(stride, stages), ...]
            ─> base layer: inference.encode_latents (tiled VQVAE.encode) ─> residual VQ (rate-aware
            │  under the prior: nn.rdoq); enhancement layer (quality above its base level b): the
            │  base image, then inference.encode_detail(image, base) ─> finer grids
            ─> entropy coder ─> payload ─container.pack─> .vqz bytes (version 2; version 3 with
                          alpha ─zstd (lossless)─┘ metadata ─┘   a colour correction, below)
    decode: .vqz ─container.unpack─> header, payloads, metadata ─find model by sha256 (prefix)─>
            layers (v2: the header's list; v1: inferred from the grid shapes), checked against
            the model's own layers (_check_structure) ─entropy decoder─> grids (checked against
            the index CRC) ─inference.decode_pixels─> base image (─inference.decode_detail with
            the enhancement layer's grids, if any─>) ─> crop (─> colour correction, if the file
            has one) ─> PIL image (+ info: metadata)
    colour correction (vqcodec.color_correction): where the encoder asks for it, it decodes its
            own file, fits a correction of the decoded colours to the original and keeps it if
            it pays for its bytes
    a hierarchical model (nn.hierarchy): its levels are the layers; encode: inference.
            encode_hierarchy (ECVQ, every stage) ─> each level range-coded with its prior given
            the coarser levels' grids; decode: the same priors ─> inference.decode_hierarchy
    read_indices / decode_indices: the same, split at the grids (Indices)
    generate: prior ─nn.prior.decode_passes with a Sampler─> grids ─inference.decode_pixels─> images

How the networks run (tiles, bfloat16 or float32) is vqcodec.inference's policy, taken once
per call; which stages of which layer a quality level codes, vqcodec.quality's arithmetic.

Entropy coders: "prior" (default when the model has one) range-codes the grids with the
model's integer context prior, pass by pass (nn.rdoq's passes go to entropy.RangeEncoder as
their symbols' intervals, nn.prior.decode_passes's frequencies to RangeDecoder), then the
enhancement grids with the layer's own prior in the same range coder; "zstd" is the
memoryless baseline.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import color_correction as color_correction_module
from . import container, entropy, fileio, images, inference, metrics, zoo
from .container import Header, HeaderV1, Layer, VqzError
from .nn.prior import GuidedSampler, Sampler, decode_passes, iter_passes
from .nn.rdoq import HierarchyRateDistortion, rate_distortion_indices
from .quality import Levels, default_quality

CODERS = tuple(sorted(container.CODERS))  # the coders the container has ids for: "prior", "zstd"
# With the prior, the encoder picks indices by distortion + RATE_TRADEOFF x bits (nn.rdoq),
# in units of each stage's mean nearest-code distance per bit; chosen on held-out training
# photos with benchmarks/rdo_tradeoff.py (docs/EXPERIMENTS.md). 0 = nearest code.
RATE_TRADEOFF = 0.1
# By default the encoder fits a colour correction at the quality levels whose finest layer has
# at least this stride: the decode the fit needs fits in their time budget (docs/EXPERIMENTS.md,
# session 17); at finer levels it gains less and would cost a third more encoding time.
CORRECTION_MIN_STRIDE = 8


@dataclass(frozen=True)
class EncodeResult:
    data: bytes
    header: Header
    model: str  # the name of the model that made it
    metadata: tuple[str, ...] = ()  # the metadata kinds stored

    @property
    def bpp(self) -> float:
        return len(self.data) * 8 / (self.header.width * self.header.height)


# ------------------------------------------------------------------ the model's layers


@dataclass(frozen=True)
class _ModelLayer:
    """One layer of a model's coded indices, in coding order: its stride, the stages a file
    may hold, its codebook size, its integer prior (None: zstd only), and the stages the layer
    before it must have for this one to be coded (None: any)."""

    stride: int
    max_stages: int
    codebook_size: int
    prior: Any
    after_stages: int | None = None

    def describe(self) -> str:
        over = f" over {self.after_stages} stages of the layer before" if self.after_stages else ""
        return f"stride {self.stride} with 1-{self.max_stages} stages{over}"


@dataclass(frozen=True)
class _Model:
    """An installed model as the codec sees it: its parts and its layers, in coding order."""

    entry: zoo.ModelEntry
    vqvae: Any  # None for a hierarchical model
    enhance: Any
    layers: tuple[_ModelLayer, ...]
    levels: Levels
    hierarchy: Any = None  # nn.hierarchy.HierarchicalVQ: its levels are the layers

    @property
    def default_quality(self) -> int:
        return default_quality(self.levels.count if self.vqvae is None else self.vqvae.config.num_stages)

    @property
    def padding(self) -> int:
        """Images are padded to a multiple of this: the largest stride (all are powers of 2)."""
        return max(layer.stride for layer in self.layers)

    def describe(self) -> str:
        return "; then ".join(layer.describe() for layer in self.layers)


def _load_model(entry: zoo.ModelEntry, made_by: str | None = None) -> _Model:
    """The base VQ-VAE is the first layer; an enhancement layer, if any, the second, coded
    over the base's level b. A hierarchical model's levels are its layers, coarse to fine,
    each coded over all the stages of the one before. made_by: the sha256 (prefix) of the model
    that made the files to decode, whose level priors they were coded with (zoo.load_hierarchy)."""
    hierarchy = zoo.load_hierarchy(entry, made_by)
    if hierarchy is not None:
        model, priors = hierarchy
        # channels-last weights, as the images and states the networks see: oneDNN's convolutions
        # then skip a reorder (the encoder's analysis about 10 % faster)
        return _hierarchy_model(entry, model.to(memory_format=torch.channels_last), priors)
    vqvae, enhance = zoo.load(entry), zoo.load_enhance(entry)
    cfg, levels = vqvae.config, zoo.levels_of(vqvae, enhance)
    layers = [_ModelLayer(cfg.stride, cfg.num_stages, cfg.codebook_size, zoo.load_prior(entry))]
    if enhance is not None:
        layers.append(_ModelLayer(enhance.config.stride, enhance.config.num_stages, enhance.config.codebook_size,
                                  zoo.load_enhance_prior(entry), levels.base))
    return _Model(entry, vqvae, enhance, tuple(layers), levels)


def _hierarchy_model(entry: zoo.ModelEntry | None, model, priors) -> _Model:
    """A hierarchical model's networks (HierarchicalVQ) and level priors as the codec sees them."""
    cfg = model.config
    layers = tuple(_ModelLayer(stride, stages, cfg.codebook_size, prior, cfg.level_stages[i - 1] if i else None)
                   for i, (stride, stages, prior) in enumerate(zip(cfg.level_strides, cfg.level_stages, priors)))
    return _Model(entry, None, None, layers, cfg.quality_levels(), model)


def _model_for(model: str | None) -> _Model:
    return _load_model(zoo.find(model))


def _structure(model: _Model, level: int) -> tuple[Layer, ...]:
    """The layers quality level `level` codes (quality.Levels.stages)."""
    return tuple(Layer(layer.stride, stages) for layer, stages in zip(model.layers, model.levels.stages(level)))


def _check_structure(layers: tuple[Layer, ...], model: _Model, exact: bool = True) -> None:
    """Refuse (VqzError) a layer list the model cannot decode: the file's layers must be the
    model's first layers, in order, each with at most the stages it has, and a layer that
    builds on the one before at a given level gets that level. With exact False (the file was
    made by the earlier weights file this one carries the base of), only the first layer."""
    name, problem = model.entry.name, None
    if len(layers) > len(model.layers):
        problem = f"it has {len(model.layers)} layer(s)"
    for i, (got, spec) in enumerate(zip(layers, model.layers)):
        if problem:
            break
        if got.stride != spec.stride:
            problem = f"its layer {i + 1} has stride {spec.stride}, not {got.stride}"
        elif got.stages > spec.max_stages:
            problem = f"its stride-{spec.stride} layer has {spec.max_stages} stages, not {got.stages}"
        elif i and spec.after_stages and layers[i - 1].stages != spec.after_stages:
            problem = (f"its stride-{spec.stride} layer builds on {spec.after_stages} stages of the stride-"
                       f"{model.layers[i - 1].stride} layer, not {layers[i - 1].stages}")
    if problem:
        shown = ", ".join(f"stride {layer.stride} x {layer.stages} stage(s)" for layer in layers)
        raise VqzError(f"model '{name}' cannot decode the layers of this file ({shown}): {problem} "
                       f"(model '{name}' codes {model.describe()})")
    if not exact and len(layers) > 1:
        raise VqzError(f"file was made by an earlier enhancement layer of model '{name}', which is not installed")


def _grid_shape(model: _Model, layer: Layer, height: int, width: int) -> tuple[int, int]:
    """(rows, cols) of a layer's grids: the image padded to the model's padding, over the stride."""
    p = model.padding
    return math.ceil(height / p) * p // layer.stride, math.ceil(width / p) * p // layer.stride


def _check_quality(quality: int | None, model: _Model) -> int:
    levels = model.levels.count
    if quality is None:
        return model.default_quality
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= levels:
        raise ValueError(f"quality must be an integer from 1 to {levels} for model '{model.entry.name}', "
                         f"got {quality!r}")
    return int(quality)


def _choose_coder(coder: str | None, model: _Model, layers: tuple[Layer, ...]) -> str:
    """The coder for a file of these layers; the default is the prior when the model has a
    prior for each of them."""
    if coder is not None and coder not in CODERS:
        raise ValueError(f"unknown coder '{coder}'; available: {', '.join(CODERS)}")
    has_priors = all(spec.prior is not None for spec in model.layers[:len(layers)])
    if coder == "prior" and not has_priors:
        what = "enhancement levels have" if model.layers[0].prior is not None else "has"
        raise ValueError(f"model '{model.entry.name}' {what} no prior; use coder 'zstd'")
    return coder or ("prior" if has_priors else "zstd")


# ------------------------------------------------------------------ indices <-> payload


def _index_payload(model: _Model, rgb: np.ndarray, quality: int, coder: str,
                   tradeoff: float, refine_steps: int) -> tuple[list[np.ndarray], bytes]:
    """The index grids of RGB pixels (H, W, 3) at a quality level, layer by layer in coding
    order, and their coded payload: the base model's grids, then the enhancement layer's over
    that base level."""
    padded = images.pad_to_multiple(rgb, model.padding)
    if model.hierarchy is not None:
        if refine_steps:
            raise ValueError(f"model '{model.entry.name}' is hierarchical: refine_steps is for VQ-VAE models")
        config = model.hierarchy.config
        factor = config.lambda_factor(metrics.activity(rgb)) if config.activity_exponent else 1.0
        return _hierarchy_payload(model, padded, quality, coder, tradeoff, factor)
    layers = _structure(model, quality)
    vqvae, base_layer, policy = model.vqvae, model.layers[0], inference.Policy.default()
    z = inference.encode_latents(vqvae, padded, policy)
    if refine_steps:
        z = inference.refine_latents(vqvae, padded, z, layers[0].stages, refine_steps, policy)
    encoder = entropy.RangeEncoder()
    if coder == "zstd":
        base = vqvae.quantizer.quantize(z, layers[0].stages)
    else:
        base = rate_distortion_indices(vqvae.quantizer, base_layer.prior, z, layers[0].stages, tradeoff,
                                       sink=lambda coded: encoder.add_intervals(*coded.intervals()))[0][None]
    grids = list(base[0].numpy())
    if len(layers) > 1:
        base_pixels = inference.decode_pixels(vqvae, base, policy)
        detail = inference.encode_detail(model.enhance, padded, base_pixels, layers[1].stages, policy)[0]
        grids += list(detail.numpy())
        if coder == "prior":  # the same range coder goes on with the enhancement layer's prior
            for _, symbols, freqs in iter_passes(model.layers[1].prior, detail):
                encoder.add(symbols, freqs)
    return grids, entropy.zstd_encode(grids) if coder == "zstd" else encoder.payload()


def _hierarchy_payload(model: _Model, padded: np.ndarray, quality: int, coder: str,
                       tradeoff: float, lambda_factor: float) -> tuple[list[np.ndarray], bytes]:
    """_index_payload of a hierarchical model: every stage's indices by ECVQ at the model's
    encode_lambda_scale x the quality level's lambda for the stage's level (HierarchyConfig.ladder)
    x the image's lambda_factor (HierarchyConfig.lambda_factor), with bits weighted
    tradeoff / RATE_TRADEOFF times as much (tradeoff 0: the nearest codes); each level
    range-coded with its prior, given the coarser levels' grids. With the prior coder the
    bits ECVQ weighs are the priors' own (nn.rdoq.HierarchyRateDistortion), else those of
    the model's training entropy model."""
    layers = _structure(model, quality)
    hierarchy = model.hierarchy
    n, multiples = hierarchy.config.ladder[quality - 1]
    lam = ([float(hierarchy.stage_lambdas()[n - 1]) * hierarchy.config.encode_lambda_scale * multiple
            * lambda_factor * RATE_TRADEOFF / tradeoff for multiple in multiples] if tradeoff else None)  # per level
    policy = inference.Policy.default()
    if coder == "prior" and lam is not None:
        encoder = entropy.RangeEncoder()
        chooser = HierarchyRateDistortion([spec.prior for spec in model.layers[:len(layers)]],
                                          [layer.stages for layer in layers],
                                          [float(hierarchy.assignment_weight(torch.tensor(level_lam)))
                                           for level_lam in lam[:len(layers)]],
                                          lambda coded: encoder.add_intervals(*coded.intervals()))
        grids = inference.encode_hierarchy(hierarchy, padded, n, lam, policy, chooser)
        return [grid.numpy() for grid in grids], encoder.payload()
    grids = inference.encode_hierarchy(hierarchy, padded, n, lam, policy)
    arrays = [grid.numpy() for grid in grids]
    if coder == "zstd":
        return arrays, entropy.zstd_encode(arrays)
    encoder, start = entropy.RangeEncoder(), 0
    for layer, spec in zip(layers, model.layers):
        for _, symbols, freqs in iter_passes(spec.prior, torch.stack(grids[start:start + layer.stages]),
                                             _coarse(spec, grids[:start])):
            encoder.add(symbols, freqs)
        start += layer.stages
    return arrays, encoder.payload()


def hierarchy_grids(model, priors: list, rgb: np.ndarray, quality: int) -> list[np.ndarray]:
    """The index grids (h, w) per stage, coarse to fine, that the codec writes for RGB pixels
    (H, W, 3) uint8 at `quality` with a hierarchical model's networks (HierarchicalVQ, its encoder
    settings in its config) and level priors (IntegerPrior), which choose the indices: what the
    priors code, for training them on (training.hierarchy_prior_task, codec_grids)."""
    with torch.no_grad():
        return _index_payload(_hierarchy_model(None, model, priors), rgb, quality, "prior", RATE_TRADEOFF, 0)[0]


def _coarse(spec: _ModelLayer, grids: list) -> list[torch.Tensor] | None:
    """The coarser grids (h, w) a layer's prior conditions on (a hierarchical model's coarser
    levels), as tensors; None when it conditions on none."""
    if not spec.prior.config.coarse_factors:
        return None
    return [torch.as_tensor(np.asarray(grid)).long() for grid in grids]


def _decode_grids(payload: bytes, coder: str, model: _Model, layers: tuple[Layer, ...],
                  shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Inverse of _index_payload (shapes: one per layer). Raises ValueError on a payload that
    cannot be decoded."""
    if coder == "zstd":
        return entropy.zstd_decode(payload, [shape for layer, shape in zip(layers, shapes)
                                             for _ in range(layer.stages)])
    specs = model.layers[:len(layers)]
    symbols = sum(layer.stages * rows * cols for layer, (rows, cols) in zip(layers, shapes))
    entropy.check_range_payload(len(payload), symbols, min(spec.codebook_size for spec in specs))
    grids = []
    try:
        decoder = entropy.RangeDecoder(payload)
        for layer, spec, (rows, cols) in zip(layers, specs, shapes):  # one range coder for all layers
            coarse = _coarse(spec, grids)
            grids += list(decode_passes(spec.prior, layer.stages, rows, cols, decoder,
                                        coarse=coarse and [grid.unsqueeze(0) for grid in coarse])[0].numpy())
    except Exception as error:  # including the range decoder's own errors on garbage input
        raise ValueError(str(error)) from None
    return grids


def _pixels(model: _Model, per_layer: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """The RGB image (height, width, 3) the layers' grids decode to: the base model's, then
    the enhancement layer's detail over it; cropped from the padded size."""
    def batch(grids: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(grids)).long().unsqueeze(0)

    policy = inference.Policy.default()
    if model.hierarchy is not None:
        grids = [torch.from_numpy(np.ascontiguousarray(grid)) for array in per_layer for grid in array]
        return images.crop(inference.decode_hierarchy(model.hierarchy, grids, policy), height, width)
    pixels = inference.decode_pixels(model.vqvae, batch(per_layer[0]), policy)
    if len(per_layer) > 1:
        pixels = inference.decode_detail(model.enhance, batch(per_layer[1]), pixels, policy)
    return images.crop(pixels, height, width)


# ------------------------------------------------------------------ encode


def encode_image(image, quality: int | None = None, model: str | None = None,
                 coder: str | None = None, rate_tradeoff: float | None = None,
                 metadata=None, refine_steps: int = 0, color_correction: bool | None = None) -> EncodeResult:
    """Encode an image (path, bytes, PIL image or uint8 array) to .vqz bytes plus its header.

    rate_tradeoff: with the prior coder, how much the choice of indices weighs bits against
    distortion (None = RATE_TRADEOFF; 0 = nearest codes). refine_steps: gradient steps that fit
    the latents to this image before quantizing (nn.refine: a better picture at about the same
    size, for encoding time; 0 = the encoder network's latents). metadata: which of the input's ICC
    profile, EXIF and XMP to store, "all", "none" or a comma list such as "icc,exif" (or a list
    of those names); None = fileio.DEFAULT_METADATA (all). EXIF and XMP are stored saying
    orientation 1, the orientation having been applied to the pixels. color_correction: fit
    one (vqcodec.color_correction) and keep it where it makes a better file (True), never
    (False), or None: at the levels whose finest layer has stride CORRECTION_MIN_STRIDE or
    more, for colour images (modes RGB, RGBA)."""
    if rate_tradeoff is not None and not rate_tradeoff >= 0:
        raise ValueError(f"rate_tradeoff must be >= 0, got {rate_tradeoff}")
    if isinstance(refine_steps, bool) or not isinstance(refine_steps, (int, np.integer)) or refine_steps < 0:
        raise ValueError(f"refine_steps must be an integer >= 0, got {refine_steps!r}")
    kinds = fileio.metadata_kinds(fileio.DEFAULT_METADATA if metadata is None else metadata)
    if kinds:
        picture, found = images.load_image_with_metadata(image)
    else:
        picture, found = images.load_image(image), fileio.ImageMetadata()
    kept = found.select(kinds).items()
    try:
        container.check_metadata(kept)
    except VqzError as error:
        raise ValueError(f"the input's {error}; store less of it with metadata= (vqcodec encode --metadata), "
                         "for example 'icc' or 'none'") from None
    chosen = _model_for(model)
    quality = _check_quality(quality, chosen)
    layers = _structure(chosen, quality)
    coder = _choose_coder(coder, chosen, layers)
    rgb, alpha = images.split_alpha(picture)
    tradeoff = RATE_TRADEOFF if rate_tradeoff is None else float(rate_tradeoff)
    grids, payload = _index_payload(chosen, rgb, quality, coder, tradeoff, int(refine_steps))
    header = Header(
        model_prefix=container.model_prefix(chosen.entry.sha256), width=picture.width, height=picture.height,
        mode=picture.mode, quality=quality, coder=coder, layers=layers, index_crc32=entropy.index_checksum(grids),
    )
    alpha_payload = images.compress_alpha(alpha) if alpha is not None else b""
    data = container.pack(header, payload, alpha_payload, kept)
    if color_correction is None:
        color_correction = picture.mode in ("RGB", "RGBA") and min(layer.stride for layer in layers) >= \
            CORRECTION_MIN_STRIDE
    if color_correction:
        decoded = _pixels(chosen, _split(grids, layers), picture.height, picture.width)
        correction = color_correction_module.choose(decoded, rgb, len(data))
        if correction is not None:
            data = container.pack(header, payload, alpha_payload, kept, correction.to_bytes())
    return EncodeResult(data, header, chosen.entry.name, tuple(kept))


def encode_to_target(image, *, target_bpp: float | None = None, target_psnr: float | None = None,
                     model: str | None = None, coder: str | None = None, metadata=None,
                     refine_steps: int = 0, color_correction: bool | None = None) -> EncodeResult:
    """Encode at the quality level that meets a size or quality target (vqcodec.ratecontrol:
    what is guaranteed, what is searched). Exactly one target. When no level meets it, the
    nearest level's file is returned and a RateControlWarning says so."""
    import warnings

    from . import ratecontrol
    from .metrics import psnr

    if (target_bpp is None) == (target_psnr is None):
        raise ValueError("give exactly one of target_bpp and target_psnr")
    chosen = _model_for(model)
    levels = list(range(1, chosen.levels.count + 1))
    results: dict[int, EncodeResult] = {}

    def encoded(level: int) -> EncodeResult:
        if level not in results:
            results[level] = encode_image(image, level, model, coder, metadata=metadata, refine_steps=refine_steps,
                                          color_correction=color_correction)
        return results[level]

    if target_bpp is not None:
        choice = ratecontrol.for_target_bpp(levels, lambda q: encoded(q).bpp, target_bpp)
        wanted = f"{target_bpp:g} bpp"
    else:
        reference = images.split_alpha(images.load_image(image))[0]

        def quality_of(level: int) -> float:
            return psnr(reference, images.split_alpha(decode(encoded(level).data))[0])

        choice = ratecontrol.for_target_psnr(levels, quality_of, target_psnr)
        wanted = f"{target_psnr:g} dB"
    if not choice.met:
        warnings.warn(RateControlWarning(f"no quality level reaches {wanted}; used quality {choice.level} "
                                         f"({choice.value:.4g})"))
    return results[choice.level]


class RateControlWarning(UserWarning):
    """encode_to_target could not meet its target."""


def encode(image, quality: int | None = None, model: str | None = None, coder: str | None = None,
           metadata=None, refine_steps: int = 0, color_correction: bool | None = None) -> bytes:
    """Encode an image to .vqz bytes.

    image: a path, bytes of an image file, a PIL image, or a uint8 numpy array (HxW, HxWxC).
    quality: 1..N (higher = better, more bytes); None = the model's default level.
    model: a bundled model name; None = the default model.
    coder: "prior" (the model's learned prior; default when it has one) or "zstd".
    metadata: the input's ICC profile, EXIF and XMP to keep: "all", "none", or a comma list
    such as "icc" or "icc,exif"; None = all (fileio.DEFAULT_METADATA).
    refine_steps: gradient steps that fit the latents to this image (encode_image); 0 = none.
    color_correction: fit and store one (True), never (False), None = where the level's time
    budget allows (encode_image)."""
    return encode_image(image, quality, model, coder, metadata=metadata, refine_steps=refine_steps,
                        color_correction=color_correction).data


# ------------------------------------------------------------------ decode


def _find_model(header: Header | HeaderV1) -> tuple[zoo.ModelEntry, bool]:
    """The installed model that decodes a file, and whether it decodes it exactly: it made it,
    or has the same networks (zoo.ModelEntry.decodes_files_of); False: it carries that model's
    base unchanged (zoo.ModelEntry.decodes_base_of)."""
    stored = _made_by(header)
    try:
        entry = zoo.find_by_prefix(stored)  # a full sha256 is its own prefix
    except zoo.ModelError as error:
        raise VqzError(str(error)) from None
    if entry is None:
        if isinstance(header, HeaderV1):
            raise VqzError(f"file was made by model '{header.model_name}' (sha256 {stored}), "
                           "which is not installed")
        installed = ", ".join(f"'{e.name}' {container.model_prefix(e.sha256)}" for e in zoo.entries())
        raise VqzError(f"file was made by the model whose sha256 starts with {stored}, which is not "
                       f"installed (installed: {installed or 'none'})")
    return entry, entry.decodes_exactly(stored)


def _made_by(header: Header | HeaderV1) -> str:
    """The sha256 (version 1) or its prefix (later versions) of the model that made a file."""
    return header.model_sha256 if isinstance(header, HeaderV1) else header.model_prefix


def _v1_layers(header: HeaderV1, model: _Model) -> tuple[Layer, ...]:
    """The layers of a version-1 file, which lists only grid shapes: the grid count is the
    quality and each grid's shape what the image size implies, 1..S base grids, or the
    enhancement layer's base level of them followed by 1..E finer grids."""
    levels, base_level = model.levels.count, model.levels.base
    base_spec = model.layers[0]
    shapes = [tuple(shape) for shape in header.grid_shapes]
    too_many = VqzError(f"file claims quality {header.quality} with {len(shapes)} index grids; "
                        f"model '{header.model_name}' has {levels} levels")
    if len(shapes) != header.quality or header.quality > max(levels, base_spec.max_stages):
        raise too_many
    base_shape = _grid_shape(model, Layer(base_spec.stride, 1), header.height, header.width)
    base_grids = next((i for i, shape in enumerate(shapes) if shape != base_shape), len(shapes))
    if base_grids == len(shapes):
        return (Layer(base_spec.stride, base_grids),)
    expected = [base_shape] * len(shapes)
    if model.enhance is not None and base_grids == base_level:
        detail_shape = _grid_shape(model, Layer(model.layers[1].stride, 1), header.height, header.width)
        expected = [base_shape] * base_level + [detail_shape] * (len(shapes) - base_level)
    for shape, (rows, cols) in zip(shapes, expected):
        if shape != (rows, cols):
            raise VqzError(f"index grid of {shape[0]}x{shape[1]} does not fit a "
                           f"{header.width}x{header.height} image (expected {rows}x{cols})")
    if len(shapes) > levels:
        raise too_many
    return Layer(base_spec.stride, base_grids), Layer(model.layers[1].stride, len(shapes) - base_grids)


def _layers_of(header: Header | HeaderV1, model: _Model, exact: bool) -> tuple[Layer, ...]:
    """A file's layers, checked against the model: versions 2 and 3 state them, version 1 implies them."""
    layers = _v1_layers(header, model) if isinstance(header, HeaderV1) else header.layers
    _check_structure(layers, model, exact)
    return layers


def _split(grids: list[np.ndarray], layers: tuple[Layer, ...]) -> list[np.ndarray]:
    """Flat grids in coding order -> one (stages, rows, cols) array per layer."""
    per_layer, start = [], 0
    for layer in layers:
        per_layer.append(np.stack(grids[start:start + layer.stages]))
        start += layer.stages
    return per_layer


def _indices_of(parsed: container.Container):
    """(model, layers, one (stages, rows, cols) index array per layer) of an unpacked file,
    checked against its index CRC."""
    header = parsed.header
    entry, exact = _find_model(header)
    model = _load_model(entry, _made_by(header))
    layers = _layers_of(header, model, exact)
    specs = model.layers[:len(layers)]
    if header.coder == "prior" and any(spec.prior is None for spec in specs):
        raise VqzError(f"file uses the prior coder, but model '{entry.name}' has no prior for its layers")
    shapes = [_grid_shape(model, layer, header.height, header.width) for layer in layers]
    try:
        grids = _decode_grids(parsed.index_payload, header.coder, model, layers, shapes)
    except ValueError as error:
        raise VqzError(f"corrupt index payload: {error}") from None
    if entropy.index_checksum(grids) != header.index_crc32:
        raise VqzError("decoded indices do not match the stored index checksum")
    per_layer = _split(grids, layers)
    for spec, array in zip(specs, per_layer):
        if int(array.max()) >= spec.codebook_size:
            raise VqzError(f"index out of range for a codebook of {spec.codebook_size} entries")
    return model, layers, per_layer


def decode(data: bytes, *, max_pixels: int | None = None) -> Image.Image:
    """Decode .vqz bytes to a PIL image of the original size and mode (L, LA, RGB or RGBA),
    with the file's ICC profile, EXIF and XMP in its `info` (icc_profile, exif, xmp).

    Raises VqzError for malformed, corrupt or unsupported data, including a file made
    by a model that is not installed. max_pixels overrides the pixel limit."""
    parsed = container.unpack(bytes(data), max_pixels=max_pixels)
    header = parsed.header
    model, layers, per_layer = _indices_of(parsed)
    correction = None
    if parsed.correction:
        try:
            correction = color_correction_module.ColorCorrection.from_bytes(parsed.correction)
        except ValueError as error:
            raise VqzError(f"corrupt colour correction: {error}") from None
    alpha = None
    if header.has_alpha:
        try:
            alpha = images.decompress_alpha(parsed.alpha_payload, header.height, header.width)
        except ValueError as error:
            raise VqzError(f"corrupt alpha payload: {error}") from None
    rgb = _pixels(model, per_layer, header.height, header.width)
    if correction is not None:
        rgb = correction.apply(rgb)
    picture = images.merge_planes(rgb, alpha, header.mode)
    picture.info.update(fileio.ImageMetadata(**parsed.metadata).to_info())
    return picture


# ------------------------------------------------------------------ indices


@dataclass(frozen=True)
class IndexLayer:
    """The index grids of one layer: `indices` (stages, rows, cols), integers below the
    layer's codebook size; stage s codes what stages < s left (residual VQ), and each position
    stands for `stride` x `stride` pixels."""

    stride: int
    indices: np.ndarray

    @property
    def stages(self) -> int:
        return int(self.indices.shape[0])


@dataclass(frozen=True)
class Indices:
    """The coded indices of one image, layer by layer in coding order, with what decoding them
    needs: the model (its name; `model_sha256` names the exact file when set), the image size
    (None: the whole padded size the grids cover) and mode ("RGB" or "L"; a file's alpha plane
    is not part of its indices)."""

    model: str
    layers: tuple[IndexLayer, ...]
    width: int | None = None
    height: int | None = None
    mode: str = "RGB"
    model_sha256: str | None = None


def read_indices(data: bytes, *, max_pixels: int | None = None) -> Indices:
    """The index grids of a .vqz file (checked against its index CRC), without decoding pixels."""
    parsed = container.unpack(bytes(data), max_pixels=max_pixels)
    header = parsed.header
    model, layers, per_layer = _indices_of(parsed)
    return Indices(model=model.entry.name, model_sha256=model.entry.sha256, width=header.width,
                   height=header.height, mode=header.mode.rstrip("A"),
                   layers=tuple(IndexLayer(layer.stride, array) for layer, array in zip(layers, per_layer)))


def decode_indices(indices: Indices) -> Image.Image:
    """The image that index grids decode to: for the Indices of read_indices(data), the image
    decode(data) gives (without its alpha plane, metadata and colour correction, which are not
    indices). Raises
    ValueError for grids the model cannot decode."""
    if not indices.layers:
        raise ValueError("no layers to decode")
    exact = True
    if indices.model_sha256 is not None:
        entry = zoo.find_by_prefix(indices.model_sha256)
        if entry is None:
            raise ValueError(f"model sha256 {indices.model_sha256} is not installed")
        exact = entry.decodes_exactly(indices.model_sha256)
    else:
        entry = zoo.find(indices.model)
    model = _load_model(entry)
    if indices.mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', got {indices.mode!r}")
    arrays = [np.asarray(layer.indices) for layer in indices.layers]
    for layer, array in zip(indices.layers, arrays):
        if array.ndim != 3 or not np.issubdtype(array.dtype, np.integer) or 0 in array.shape:
            raise ValueError(f"the stride-{layer.stride} layer's indices must be a non-empty integer array "
                             f"(stages, rows, cols), got {array.dtype} {array.shape}")
    layers = tuple(Layer(layer.stride, array.shape[0]) for layer, array in zip(indices.layers, arrays))
    _check_structure(layers, model, exact)
    rows, cols = arrays[0].shape[1:]
    height = indices.height or rows * layers[0].stride
    width = indices.width or cols * layers[0].stride
    for layer, array, spec in zip(layers, arrays, model.layers):
        expected = _grid_shape(model, layer, height, width)
        if array.shape[1:] != expected:
            raise ValueError(f"the stride-{layer.stride} layer's grids are {array.shape[1]}x{array.shape[2]}, "
                             f"a {width}x{height} image needs {expected[0]}x{expected[1]}")
        if array.min() < 0 or array.max() >= spec.codebook_size:
            raise ValueError(f"the stride-{layer.stride} layer's indices must be in 0..{spec.codebook_size - 1}")
    rgb = _pixels(model, arrays, height, width)
    return images.merge_planes(rgb, None, indices.mode)


def describe(data: bytes, *, max_pixels: int | None = None) -> dict:
    """Every header field plus the model, layers, grid shapes, metadata, sizes and bpp, for
    `vqcodec info`."""
    parsed = container.unpack(bytes(data), max_pixels=max_pixels)
    header = parsed.header
    try:
        entry, exact = _find_model(header)
    except VqzError:
        entry, exact = None, False
    fields = {"format_version": parsed.version, **header.to_dict()}
    stored = fields.get("model_sha256") or fields["model_prefix"]  # version 1: whole; 2 and 3: a prefix
    layers = header.layers if isinstance(header, Header) else None
    shapes = None
    if entry is not None:
        model = _load_model(entry)
        try:
            layers = _layers_of(header, model, exact)
            shapes = [list(_grid_shape(model, layer, header.height, header.width)) for layer in layers]
        except VqzError:
            pass
    fields.update({
        "model_name": entry.name if entry is not None else fields.get("model_name"),
        # the full sha256 when the very file that made it is installed
        "model_sha256": entry.sha256 if entry is not None and entry.sha256.startswith(stored)
        else fields.get("model_sha256"),
        "model_installed": entry is not None,
        "layers": [layer.to_dict() for layer in layers] if layers is not None else None,
        "grid_shapes": fields.get("grid_shapes") or shapes,
        "metadata": {kind: len(value) for kind, value in parsed.metadata.items()},
        "file_bytes": len(data),
        "header_bytes": parsed.header_bytes,
        "index_payload_bytes": len(parsed.index_payload),
        "alpha_payload_bytes": len(parsed.alpha_payload),
        "metadata_bytes": parsed.metadata_bytes,
        "correction_bytes": len(parsed.correction),  # the colour correction section
        "bpp": len(data) * 8 / (header.width * header.height),
    })
    return fields


def generate(count: int, *, model: str | None = None, size: tuple[int, int] | None = None,
             temperature: float | None = None, top_k: int | None = None, seed: int = 0,
             quality: int | None = None, label: int | None = None,
             guidance: float | None = None) -> list[Image.Image]:
    """Sample `count` new images from a model's prior and decode them.

    size: (height, width) in pixels, rounded up to a multiple of the model's stride
    (default: the size of the model's training images when they all share one up to
    256x256, as for digits, else 256x256). temperature: None = the model's own default
    (chosen when its prior was trained; 1.0 if it has none). quality: stages sampled
    (default all). label: the class to sample, for a model whose prior is class-conditional
    (the digits model: the digit); by default such a model samples every class equally often,
    in an order the seed shuffles. guidance: classifier-free guidance weight for such a model
    (nn.prior.GuidedSampler; None = the model's own default, 0 = none). The same arguments and
    seed give the same images."""
    chosen = _model_for(model)
    entry, vqvae, prior = chosen.entry, chosen.vqvae, chosen.layers[0].prior
    if prior is None:
        raise ValueError(f"model '{entry.name}' has no prior to sample from")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    # the stages sampled: the base VQ-VAE's (not an enhancement layer's), or a hierarchy's all
    most = chosen.levels.count if vqvae is None else vqvae.config.num_stages
    if quality is not None and (isinstance(quality, bool) or not isinstance(quality, (int, np.integer))
                                or not 1 <= quality <= most):
        raise ValueError(f"quality must be an integer from 1 to {most} for model '{entry.name}', got {quality!r}")
    stages = most if quality is None else int(quality)
    stride = chosen.padding if vqvae is None else vqvae.config.stride
    training = json.loads(zoo.read_metadata(entry.path).get("prior_training", "{}"))
    height, width = size or tuple(training.get("sample_size", (256, 256)))
    if temperature is None:
        temperature = float(training.get("sample_temperature", 1.0))
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {height}x{width}")
    rows, cols = math.ceil(height / stride), math.ceil(width / stride)
    if rows * cols * count > container.resolve_max_pixels(None) // (stride * stride):
        raise ValueError(f"{count} images of {height}x{width} exceed the pixel limit")
    classes = _sample_classes(prior.config.num_classes, count, seed, label, entry.name)
    if guidance is None:
        guidance = float(training.get("sample_guidance", 0.0)) if classes is not None else 0.0
    sampler = Sampler(temperature, top_k, seed)
    if guidance and classes is None:
        raise ValueError(f"model '{entry.name}' has no classes to guide towards (its prior is not class-conditional)")
    if guidance:  # each grid twice: with its class, then without (GuidedSampler)
        sampler = GuidedSampler(sampler, guidance)
        classes = torch.cat([classes, torch.full((count,), -1)])
    policy = inference.Policy.default()
    if vqvae is None:  # level by level, coarse to fine, each given the coarser levels' samples
        grids: list[torch.Tensor] = []  # (count, h, w) per stage
        for layer, spec in zip(_structure(chosen, stages), chosen.layers):
            scale = stride // layer.stride
            coarse = grids if spec.prior.config.coarse_factors else None
            grids += decode_passes(spec.prior, layer.stages, rows * scale, cols * scale, sampler, count=count,
                                   coarse=coarse).unbind(1)
        return [Image.fromarray(inference.decode_hierarchy(chosen.hierarchy, [grid[i] for grid in grids], policy))
                for i in range(count)]
    indices = decode_passes(prior, stages, rows, cols, sampler, count=len(classes) if guidance else count,
                            classes=classes)[:count]
    return [Image.fromarray(inference.decode_pixels(vqvae, grid.unsqueeze(0), policy)) for grid in indices]


def _sample_classes(num_classes: int, count: int, seed: int, label: int | None, name: str) -> torch.Tensor | None:
    """The class of each sample (None for a prior without classes): `label` for all, else each
    class equally often (runs of a shuffled 0..num_classes-1, so any count is near-balanced)."""
    if label is not None:
        if not num_classes:
            raise ValueError(f"model '{name}' has no classes to choose from (its prior is not class-conditional)")
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < num_classes:
            raise ValueError(f"label must be an integer from 0 to {num_classes - 1} for model '{name}', got {label!r}")
        return torch.full((count,), int(label))
    if not num_classes:
        return None
    generator = torch.Generator().manual_seed(seed)
    runs = [torch.randperm(num_classes, generator=generator) for _ in range(-(-count // num_classes))]
    return torch.cat(runs)[:count]


def load_model(name: str | None = None):
    """The network of a bundled model (default model when name is None), sha256-checked: its
    VQVAE, or a hierarchical model's HierarchicalVQ."""
    entry = zoo.find(name)
    hierarchy = zoo.load_hierarchy(entry)
    return zoo.load(entry) if hierarchy is None else hierarchy[0]

