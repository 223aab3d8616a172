"""The one place that joins image I/O, model, prior, entropy coder and container.

    encode: image ─images.load_image─> RGB (+ alpha) ─pad to stride─> VQVAE.encode_latents (tiled)
            ─> residual VQ: q index grids (rate-aware under the prior: nn.rdoq)
            │  above the enhancement layer's base level b: b base grids, decoded to the base
            │  image, then EnhanceLayer.encode_pixels(image, base) ─> q - b finer grids
            ─> entropy coder ─> payload ─container.pack─> .vqz bytes
                                    alpha ─zstd (lossless)─┘
    decode: .vqz ─container.unpack─> header, payloads ─find model by sha256─> entropy decoder
            ─> grids (checked against the index CRC) ─VQVAE.decode_pixels (tiled)─> base image
            (─EnhanceLayer.decode_pixels with the finer grids, if any─>) ─> crop ─> PIL image
    generate: prior ─nn.prior.decode_passes with a Sampler─> grids ─VQVAE.decode_pixels─> images

Entropy coders: "prior" (default when the model has one) range-codes the grids with the
model's integer context prior, pass by pass (the frequencies of nn.rdoq / nn.prior.decode_passes
feed entropy.range_encode / RangeDecoder), then the enhancement grids with the layer's own
prior in the same range coder; "zstd" is the memoryless baseline.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from . import container, entropy, images, zoo
from .container import Header, VqzError
from .nn.prior import Sampler, decode_passes, iter_passes
from .nn.rdoq import rate_distortion_indices

CODERS = ("prior", "zstd")
# With the prior, the encoder picks indices by distortion + RATE_TRADEOFF x bits (nn.rdoq),
# in units of each stage's mean nearest-code distance per bit; chosen on held-out training
# photos with benchmarks/rdo_tradeoff.py (docs/EXPERIMENTS.md). 0 = nearest code.
RATE_TRADEOFF = 0.1


@dataclass(frozen=True)
class EncodeResult:
    data: bytes
    header: Header

    @property
    def bpp(self) -> float:
        return len(self.data) * 8 / (self.header.width * self.header.height)


def _model_for(model: str | None):
    entry = zoo.find(model)
    return entry, zoo.load(entry)


def _check_quality(quality: int | None, entry: zoo.ModelEntry, levels: int, base_stages: int) -> int:
    if quality is None:
        return zoo.default_quality(base_stages)
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= levels:
        raise ValueError(f"quality must be an integer from 1 to {levels} for model '{entry.name}', "
                         f"got {quality!r}")
    return int(quality)


def _choose_coder(coder: str | None, entry: zoo.ModelEntry, enhanced: bool):
    """(coder name, prior or None, enhancement prior or None) for a file whose quality does
    (enhanced) or does not use the enhancement layer; the default is the prior when the model
    has the priors that quality needs."""
    if coder is not None and coder not in CODERS:
        raise ValueError(f"unknown coder '{coder}'; available: {', '.join(CODERS)}")
    prior, enhance_prior = zoo.load_prior(entry), zoo.load_enhance_prior(entry)
    has_priors = prior is not None and (enhance_prior is not None or not enhanced)
    if coder == "prior" and not has_priors:
        what = "enhancement levels have" if prior is not None else "has"
        raise ValueError(f"model '{entry.name}' {what} no prior; use coder 'zstd'")
    if coder is None:
        coder = "prior" if has_priors else "zstd"
    return coder, prior, enhance_prior


def _index_payload(vqvae, priors, enhance, padded: np.ndarray, base_stages: int, detail_stages: int,
                   coder: str, tradeoff: float) -> tuple[list[np.ndarray], bytes]:
    """The index grids of padded pixels and their coded payload: base_stages grids of the base
    model, then detail_stages grids of the enhancement layer over that base level."""
    prior, enhance_prior = priors
    z = vqvae.encode_latents(padded)
    encoder = entropy.RangeEncoder()
    if coder == "zstd":
        base = vqvae.quantizer.quantize(z, base_stages)
    else:
        base = rate_distortion_indices(vqvae.quantizer, prior, z, base_stages, tradeoff,
                                       sink=lambda stage, symbols, freqs: encoder.add(symbols, freqs))[0][None]
    grids = list(base[0].numpy())
    if detail_stages:
        detail = enhance.encode_pixels(padded, vqvae.decode_pixels(base), detail_stages)[0]
        grids += list(detail.numpy())
        if coder == "prior":  # the same range coder goes on with the enhancement layer's prior
            for _, symbols, freqs in iter_passes(enhance_prior, detail):
                encoder.add(symbols, freqs)
    return grids, entropy.zstd_encode(grids) if coder == "zstd" else encoder.payload()


def _decode_grids(payload: bytes, shapes: list[tuple[int, int]], coder: str, priors,
                  base_grids: int) -> list[np.ndarray]:
    """Inverse of _index_payload. Raises ValueError on a payload that cannot be decoded."""
    if coder == "zstd":
        return entropy.zstd_decode(payload, shapes)
    prior, enhance_prior = priors
    base_shapes, detail_shapes = shapes[:base_grids], shapes[base_grids:]
    rows, cols = base_shapes[0]
    symbols = len(base_shapes) * rows * cols + sum(r * c for r, c in detail_shapes)
    entropy.check_range_payload(len(payload), symbols, prior.config.codebook_size)
    try:
        decoder = entropy.RangeDecoder(payload)
        grids = list(decode_passes(prior, len(base_shapes), rows, cols, decoder)[0].numpy())
        if detail_shapes:
            (r, c), stages = detail_shapes[0], len(detail_shapes)
            grids += list(decode_passes(enhance_prior, stages, r, c, decoder)[0].numpy())
    except Exception as error:  # including the range decoder's own errors on garbage input
        raise ValueError(str(error)) from None
    return grids


def encode_image(image, quality: int | None = None, model: str | None = None,
                 coder: str | None = None, rate_tradeoff: float | None = None) -> EncodeResult:
    """Encode an image (path, bytes, PIL image or uint8 array) to .vqz bytes plus its header.

    rate_tradeoff: with the prior coder, how much the choice of indices weighs bits against
    distortion (None = RATE_TRADEOFF; 0 = nearest codes)."""
    if rate_tradeoff is not None and not rate_tradeoff >= 0:
        raise ValueError(f"rate_tradeoff must be >= 0, got {rate_tradeoff}")
    picture = images.load_image(image)
    entry, vqvae = _model_for(model)
    enhance = zoo.load_enhance(entry)
    levels, base_level = zoo.levels_of(vqvae, enhance)
    quality = _check_quality(quality, entry, levels, vqvae.config.num_stages)
    coder, *priors = _choose_coder(coder, entry, enhanced=quality > base_level)
    rgb, alpha = images.split_alpha(picture)
    padded = images.pad_to_multiple(rgb, _padding(vqvae, enhance))
    tradeoff = RATE_TRADEOFF if rate_tradeoff is None else float(rate_tradeoff)
    base_stages = min(quality, base_level)
    grids, payload = _index_payload(vqvae, priors, enhance, padded, base_stages, quality - base_stages, coder,
                                    tradeoff)
    header = Header(
        model_name=entry.name, model_sha256=entry.sha256, width=picture.width, height=picture.height,
        mode=picture.mode, quality=quality, coder=coder,
        grid_shapes=tuple(g.shape for g in grids), index_crc32=entropy.index_checksum(grids),
    )
    alpha_payload = images.compress_alpha(alpha) if alpha is not None else b""
    return EncodeResult(container.pack(header, payload, alpha_payload), header)


def encode(image, quality: int | None = None, model: str | None = None, coder: str | None = None) -> bytes:
    """Encode an image to .vqz bytes.

    image: a path, bytes of an image file, a PIL image, or a uint8 numpy array (HxW, HxWxC).
    quality: 1..N (higher = better, more bytes); None = the model's default level.
    model: a bundled model name; None = the default model.
    coder: "prior" (the model's learned prior; default when it has one) or "zstd"."""
    return encode_image(image, quality, model, coder).data


def _padding(vqvae, enhance) -> int:
    """Images are padded to a multiple of this: the larger stride (both are powers of 2)."""
    return max(vqvae.config.stride, enhance.config.stride if enhance is not None else 1)


def _check_grids(header: Header, vqvae, enhance) -> int:
    """The grid count must be the quality and each grid's shape what the image size implies:
    1..S base grids, or the enhancement layer's base level of them followed by 1..E finer
    enhancement grids. Returns the number of base grids."""
    levels, base_level = zoo.levels_of(vqvae, enhance)
    shapes = [tuple(shape) for shape in header.grid_shapes]
    too_many = VqzError(f"file claims quality {header.quality} with {len(shapes)} index grids; "
                        f"model '{header.model_name}' has {levels} levels")
    if len(shapes) != header.quality or header.quality > max(levels, vqvae.config.num_stages):
        raise too_many
    padding = _padding(vqvae, enhance)
    height, width = (math.ceil(n / padding) * padding for n in (header.height, header.width))
    base_shape = (height // vqvae.config.stride, width // vqvae.config.stride)
    base_grids = next((i for i, shape in enumerate(shapes) if shape != base_shape), len(shapes))
    if base_grids == len(shapes):
        return base_grids
    expected = [base_shape] * len(shapes)
    if enhance is not None and base_grids == base_level:
        detail_shape = (height // enhance.config.stride, width // enhance.config.stride)
        expected = [base_shape] * base_level + [detail_shape] * (len(shapes) - base_level)
    for shape, (rows, cols) in zip(shapes, expected):
        if shape != (rows, cols):
            raise VqzError(f"index grid of {shape[0]}x{shape[1]} does not fit a "
                           f"{header.width}x{header.height} image (expected {rows}x{cols})")
    if len(shapes) > levels:
        raise too_many
    return base_grids


def read_indices(data: bytes, *, max_pixels: int | None = None) -> list[np.ndarray]:
    """The index grids of a .vqz file (checked against its index CRC), without decoding pixels."""
    parsed = container.unpack(bytes(data), max_pixels=max_pixels)
    return _indices_of(parsed)[3]


def _indices_of(parsed: container.Container):
    """(model entry, VQVAE, enhancement layer or None, checked index grids, how many of them are
    base grids) of an unpacked file."""
    header = parsed.header
    entry = zoo.find_by_hash(header.model_sha256)
    if entry is None:
        raise VqzError(f"file was made by model '{header.model_name}' (sha256 {header.model_sha256}), "
                       "which is not installed")
    if header.coder not in CODERS:
        raise VqzError(f"file uses entropy coder '{header.coder}', which this version cannot decode")
    vqvae, enhance = zoo.load(entry), zoo.load_enhance(entry)
    cfg = vqvae.config
    base_grids = _check_grids(header, vqvae, enhance)
    enhanced = base_grids < header.quality
    if entry.sha256 != header.model_sha256 and enhanced:
        raise VqzError(f"file was made by an earlier enhancement layer of model '{header.model_name}' "
                       f"(sha256 {header.model_sha256}), which is not installed")
    priors = zoo.load_prior(entry), zoo.load_enhance_prior(entry)
    if header.coder == "prior" and (priors[0] is None or (enhanced and priors[1] is None)):
        raise VqzError(f"file uses the prior coder, but model '{entry.name}' has no prior for its levels")
    try:
        grids = _decode_grids(parsed.index_payload, list(header.grid_shapes), header.coder, priors, base_grids)
    except ValueError as error:
        raise VqzError(f"corrupt index payload: {error}") from None
    if entropy.index_checksum(grids) != header.index_crc32:
        raise VqzError("decoded indices do not match the stored index checksum")
    for level, grid in enumerate(grids, start=1):
        size = cfg.codebook_size if level <= base_grids else enhance.config.codebook_size
        if int(grid.max()) >= size:
            raise VqzError(f"index out of range for a codebook of {size} entries")
    return entry, vqvae, enhance, grids, base_grids


def decode(data: bytes, *, max_pixels: int | None = None) -> Image.Image:
    """Decode .vqz bytes to a PIL image of the original size and mode (L, LA, RGB or RGBA).

    Raises VqzError for malformed, corrupt or unsupported data, including a file made
    by a model that is not installed. max_pixels overrides the pixel limit."""
    parsed = container.unpack(bytes(data), max_pixels=max_pixels)
    header = parsed.header
    entry, vqvae, enhance, grids, base_grids = _indices_of(parsed)
    alpha = None
    if header.has_alpha:
        try:
            alpha = images.decompress_alpha(parsed.alpha_payload, header.height, header.width)
        except ValueError as error:
            raise VqzError(f"corrupt alpha payload: {error}") from None
    pixels = vqvae.decode_pixels(torch.from_numpy(np.stack(grids[:base_grids])).long().unsqueeze(0))
    if len(grids) > base_grids:
        detail = torch.from_numpy(np.stack(grids[base_grids:])).long().unsqueeze(0)
        pixels = enhance.decode_pixels(detail, pixels)
    rgb = images.crop(pixels, header.height, header.width)
    return images.merge_planes(rgb, alpha, header.mode)


def describe(data: bytes, *, max_pixels: int | None = None) -> dict:
    """Every header field plus sizes and bpp, for `vqcodec info`."""
    parsed = container.unpack(bytes(data), max_pixels=max_pixels)
    header = parsed.header
    entry = zoo.find_by_hash(header.model_sha256)
    return {
        **header.to_dict(),
        "format_version": container.FORMAT_VERSION,
        "model_installed": entry is not None,
        "file_bytes": len(data),
        "index_payload_bytes": len(parsed.index_payload),
        "alpha_payload_bytes": len(parsed.alpha_payload),
        "bpp": len(data) * 8 / (header.width * header.height),
    }


def generate(count: int, *, model: str | None = None, size: tuple[int, int] | None = None,
             temperature: float | None = None, top_k: int | None = None, seed: int = 0,
             quality: int | None = None) -> list[Image.Image]:
    """Sample `count` new images from a model's prior and decode them.

    size: (height, width) in pixels, rounded up to a multiple of the model's stride
    (default: the size of the model's training images when they all share one up to
    256x256, as for digits, else 256x256). temperature: None = the model's own default
    (chosen when its prior was trained; 1.0 if it has none). quality: stages sampled
    (default all). The same arguments and seed give the same images."""
    entry, vqvae = _model_for(model)
    prior = zoo.load_prior(entry)
    if prior is None:
        raise ValueError(f"model '{entry.name}' has no prior to sample from")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    cfg = vqvae.config
    stages = cfg.num_stages if quality is None else _check_quality(quality, entry, cfg.num_stages, cfg.num_stages)
    training = json.loads(zoo.read_metadata(entry.path).get("prior_training", "{}"))
    height, width = size or tuple(training.get("sample_size", (256, 256)))
    if temperature is None:
        temperature = float(training.get("sample_temperature", 1.0))
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {height}x{width}")
    rows, cols = math.ceil(height / cfg.stride), math.ceil(width / cfg.stride)
    if rows * cols * count > container.resolve_max_pixels(None) // (cfg.stride * cfg.stride):
        raise ValueError(f"{count} images of {height}x{width} exceed the pixel limit")
    indices = decode_passes(prior, stages, rows, cols, Sampler(temperature, top_k, seed), count=count)
    pictures = []
    for grid in indices:
        pictures.append(Image.fromarray(vqvae.decode_pixels(grid.unsqueeze(0))))
    return pictures


def load_model(name: str | None = None):
    """The VQVAE of a bundled model (default model when name is None), sha256-checked."""
    return zoo.load(zoo.find(name))

