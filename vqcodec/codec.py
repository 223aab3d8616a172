"""The one place that joins image I/O, model, prior, entropy coder and container.

    encode: image ─images.load_image─> RGB (+ alpha) ─pad to stride─> VQVAE.encode_latents (tiled)
            ─> residual VQ: q index grids (rate-aware under the prior: nn.rdoq)
            ─> entropy coder ─> payload ─container.pack─> .vqz bytes
                                    alpha ─zstd (lossless)─┘
    decode: .vqz ─container.unpack─> header, payloads ─find model by sha256─> entropy decoder
            ─> grids (checked against the index CRC) ─VQVAE.decode_pixels (tiled)─> crop ─> PIL image
    generate: prior ─nn.prior.decode_passes with a Sampler─> grids ─VQVAE.decode_pixels─> images

Entropy coders: "prior" (default when the model has one) range-codes the grids with the
model's integer context prior, pass by pass (the frequencies of nn.rdoq / nn.prior.decode_passes
feed entropy.range_encode / RangeDecoder); "zstd" is the memoryless baseline.
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
from .nn.prior import Sampler, decode_passes
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


def _check_quality(quality: int | None, entry: zoo.ModelEntry, num_stages: int) -> int:
    if quality is None:
        return zoo.default_quality(num_stages)
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= num_stages:
        raise ValueError(f"quality must be an integer from 1 to {num_stages} for model '{entry.name}', "
                         f"got {quality!r}")
    return int(quality)


def _choose_coder(coder: str | None, entry: zoo.ModelEntry):
    """(coder name, prior or None); the default is the prior when the model has one."""
    if coder is not None and coder not in CODERS:
        raise ValueError(f"unknown coder '{coder}'; available: {', '.join(CODERS)}")
    prior = zoo.load_prior(entry)
    if coder == "prior" and prior is None:
        raise ValueError(f"model '{entry.name}' has no prior; use coder 'zstd'")
    if coder is None:
        coder = "prior" if prior is not None else "zstd"
    return coder, prior


def _index_payload(vqvae, prior, z: torch.Tensor, quality: int, coder: str,
                   tradeoff: float) -> tuple[list[np.ndarray], bytes]:
    """The q index grids of latents z and their coded payload."""
    if coder == "zstd":
        grids = list(vqvae.quantizer.quantize(z, quality)[0].numpy())
        return grids, entropy.zstd_encode(grids)
    encoder = entropy.RangeEncoder()
    indices, _ = rate_distortion_indices(vqvae.quantizer, prior, z, quality, tradeoff,
                                         sink=lambda stage, symbols, freqs: encoder.add(symbols, freqs))
    return list(indices.numpy()), encoder.payload()


def _decode_grids(payload: bytes, shapes: list[tuple[int, int]], coder: str, prior) -> list[np.ndarray]:
    """Inverse of _index_payload. Raises ValueError on a payload that cannot be decoded."""
    if coder == "zstd":
        return entropy.zstd_decode(payload, shapes)
    rows, cols = shapes[0]
    entropy.check_range_payload(len(payload), len(shapes) * rows * cols, prior.config.codebook_size)
    try:
        indices = decode_passes(prior, len(shapes), rows, cols, entropy.RangeDecoder(payload))
    except Exception as error:  # including the range decoder's own errors on garbage input
        raise ValueError(str(error)) from None
    return list(indices[0].numpy())


def encode_image(image, quality: int | None = None, model: str | None = None,
                 coder: str | None = None, rate_tradeoff: float | None = None) -> EncodeResult:
    """Encode an image (path, bytes, PIL image or uint8 array) to .vqz bytes plus its header.

    rate_tradeoff: with the prior coder, how much the choice of indices weighs bits against
    distortion (None = RATE_TRADEOFF; 0 = nearest codes)."""
    if rate_tradeoff is not None and not rate_tradeoff >= 0:
        raise ValueError(f"rate_tradeoff must be >= 0, got {rate_tradeoff}")
    picture = images.load_image(image)
    entry, vqvae = _model_for(model)
    coder, prior = _choose_coder(coder, entry)
    cfg = vqvae.config
    quality = _check_quality(quality, entry, cfg.num_stages)
    rgb, alpha = images.split_alpha(picture)
    padded = images.pad_to_multiple(rgb, cfg.stride)
    tradeoff = RATE_TRADEOFF if rate_tradeoff is None else float(rate_tradeoff)
    grids, payload = _index_payload(vqvae, prior, vqvae.encode_latents(padded), quality, coder, tradeoff)
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


def _check_grids(header: Header, stride: int, num_stages: int) -> None:
    rows, cols = math.ceil(header.height / stride), math.ceil(header.width / stride)
    if len(header.grid_shapes) != header.quality or header.quality > num_stages:
        raise VqzError(f"file claims quality {header.quality} with {len(header.grid_shapes)} index grids; "
                       f"model '{header.model_name}' has {num_stages} levels")
    for shape in header.grid_shapes:
        if tuple(shape) != (rows, cols):
            raise VqzError(f"index grid of {shape[0]}x{shape[1]} does not fit a "
                           f"{header.width}x{header.height} image (expected {rows}x{cols})")


def read_indices(data: bytes, *, max_pixels: int | None = None) -> list[np.ndarray]:
    """The index grids of a .vqz file (checked against its index CRC), without decoding pixels."""
    parsed = container.unpack(bytes(data), max_pixels=max_pixels)
    return _indices_of(parsed)[2]


def _indices_of(parsed: container.Container):
    """(model entry, VQVAE, checked index grids) of an unpacked file."""
    header = parsed.header
    entry = zoo.find_by_hash(header.model_sha256)
    if entry is None:
        raise VqzError(f"file was made by model '{header.model_name}' (sha256 {header.model_sha256}), "
                       "which is not installed")
    if header.coder not in CODERS:
        raise VqzError(f"file uses entropy coder '{header.coder}', which this version cannot decode")
    vqvae = zoo.load(entry)
    cfg = vqvae.config
    _check_grids(header, cfg.stride, cfg.num_stages)
    prior = zoo.load_prior(entry)
    if header.coder == "prior" and prior is None:
        raise VqzError(f"file uses the prior coder, but model '{entry.name}' has no prior")
    try:
        grids = _decode_grids(parsed.index_payload, list(header.grid_shapes), header.coder, prior)
    except ValueError as error:
        raise VqzError(f"corrupt index payload: {error}") from None
    if entropy.index_checksum(grids) != header.index_crc32:
        raise VqzError("decoded indices do not match the stored index checksum")
    if any(int(g.max()) >= cfg.codebook_size for g in grids):
        raise VqzError(f"index out of range for a codebook of {cfg.codebook_size} entries")
    return entry, vqvae, grids


def decode(data: bytes, *, max_pixels: int | None = None) -> Image.Image:
    """Decode .vqz bytes to a PIL image of the original size and mode (L, LA, RGB or RGBA).

    Raises VqzError for malformed, corrupt or unsupported data, including a file made
    by a model that is not installed. max_pixels overrides the pixel limit."""
    parsed = container.unpack(bytes(data), max_pixels=max_pixels)
    header = parsed.header
    entry, vqvae, grids = _indices_of(parsed)
    alpha = None
    if header.has_alpha:
        try:
            alpha = images.decompress_alpha(parsed.alpha_payload, header.height, header.width)
        except ValueError as error:
            raise VqzError(f"corrupt alpha payload: {error}") from None
    indices = torch.from_numpy(np.stack(grids)).long().unsqueeze(0)
    rgb = images.crop(vqvae.decode_pixels(indices), header.height, header.width)
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
    stages = cfg.num_stages if quality is None else _check_quality(quality, entry, cfg.num_stages)
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

