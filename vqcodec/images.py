"""Image reading/writing and pixel plumbing for vqcodec.

This module knows nothing about the neural network (it does not import torch);
it turns whatever the user hands us into a well-defined 8-bit image and back.

Input normalisation
-------------------
:func:`load_image` accepts a path (``str`` / :class:`os.PathLike`), ``bytes``,
a binary file object, a :class:`PIL.Image.Image` or a ``numpy.uint8`` array.
File input is decoded completely (``Image.load()``) so that truncated or
garbage files raise :class:`ImageInputError` instead of failing later.
Animated images contribute their first frame only.  The EXIF ``Orientation``
tag is applied first (:func:`PIL.ImageOps.exif_transpose`), then the mode is
normalised by :func:`normalize_mode` to exactly one of ``L``, ``LA``, ``RGB``
or ``RGBA``:

==============================  =============================================
source mode                     result
==============================  =============================================
``L``, ``LA``, ``RGB``, ``RGBA`` unchanged
``1``                           ``L`` (0 / 255)
``P``                           ``RGBA`` if it has transparency
                                (``info["transparency"]`` or an RGBA palette),
                                else ``RGB``
``PA``                          ``RGBA``
``CMYK``, ``YCbCr``, ``LAB``,   ``RGB`` (Pillow's ``convert``)
``HSV``
``I;16``, ``I;16B``, ``I;16L``  ``L``: the full 16-bit range is scaled to
                                8 bits, ``round(v * 255 / 65535)``
``I`` (32-bit integer)          ``L``: clipped to 0..65535, then as ``I;16``
``F`` (32-bit float)            ``L``: clipped to 0..255 and rounded
``RGBa`` (premultiplied)        ``RGBA``
``La`` (premultiplied)          ``LA``
anything else                   ``convert("RGB")`` if Pillow can, otherwise
                                :class:`ImageInputError`
==============================  =============================================

Images with zero width or height are refused.

Metadata
--------
:func:`load_image_with_metadata` also returns the input's ICC profile, EXIF and XMP
(:func:`vqcodec.fileio.read_metadata`: read before the orientation is applied, and made to
say orientation 1), and :func:`encode_image_bytes` writes them into the formats that hold
them (:func:`vqcodec.fileio.metadata_save_options`).

Pixel plumbing
--------------
:func:`split_alpha` / :func:`merge_planes` convert between a normalised image
and an ``HxWx3`` RGB plane plus an optional ``HxW`` alpha plane (gray images
are replicated to three channels and converted back with ITU-R 601 luma,
which is exact for replicated gray).  :func:`pad_to_multiple` / :func:`crop`
adapt sizes to the network's stride, and :func:`compress_alpha` /
:func:`decompress_alpha` store the alpha plane losslessly with zstandard.
"""

from __future__ import annotations

import io
import math
import os
import pathlib
from typing import BinaryIO, Union

import numpy as np
import zstandard
from PIL import Image, ImageOps

from .fileio import ImageMetadata, metadata_save_options, metadata_warning, read_metadata

__all__ = [
    "ImageInputError",
    "ImageSource",
    "NORMALIZED_MODES",
    "load_image",
    "load_image_with_metadata",
    "normalize_mode",
    "split_alpha",
    "merge_planes",
    "pad_to_multiple",
    "crop",
    "compress_alpha",
    "decompress_alpha",
    "save_image",
    "encode_image_bytes",
    "format_for_path",
    "suffix_for_format",
    "find_images",
    "IMAGE_SUFFIXES",
    "sample_image_path",
]

#: Suffixes of the files that :func:`find_images` picks up in folders.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".ppm", ".pgm", ".pnm", ".gif")

#: Modes that :func:`normalize_mode` produces.
NORMALIZED_MODES: tuple[str, ...] = ("L", "LA", "RGB", "RGBA")

#: zstandard level used for the alpha plane.
ALPHA_ZSTD_LEVEL = 19

#: Encoder options used by :func:`encode_image_bytes`, per Pillow format name.
_SAVE_OPTIONS: dict[str, dict[str, object]] = {
    "JPEG": {"quality": 95},
    "WEBP": {"quality": 95},
}

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO,
                    Image.Image, np.ndarray]


class ImageInputError(ValueError):
    """Raised for unreadable, non-image or unsupported image input/output."""


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------

def _first_frame(img: Image.Image) -> None:
    """Seek an (animated) image to its first frame, in place."""
    if getattr(img, "n_frames", 1) > 1 and img.tell() != 0:
        img.seek(0)


def _decode(opener: "str | BinaryIO", name: str, with_metadata: bool) -> tuple[Image.Image, ImageMetadata]:
    """Open and fully decode an encoded image; return a detached, oriented copy (and its
    metadata when asked for, else an empty ImageMetadata)."""
    try:
        with Image.open(opener) as img:
            _first_frame(img)
            img.load()
            metadata = read_metadata(img) if with_metadata else ImageMetadata()
            return _exif_transpose(img), metadata
    except ImageInputError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageInputError(
            f"cannot read image {name!r}: not a recognised image format"
        ) from None
    except Exception as exc:  # Pillow plugins raise many exception types
        raise ImageInputError(f"cannot read image {name!r}: {exc}") from exc


def _exif_transpose(img: Image.Image) -> Image.Image:
    """Return a copy of ``img`` with its EXIF orientation applied (best effort)."""
    try:
        out = ImageOps.exif_transpose(img)
    except Exception as error:  # broken EXIF must not make a decodable image unreadable
        metadata_warning(f"EXIF orientation not applied: it cannot be read ({error})")
        out = None
    return img.copy() if out is None else out


def _from_array(arr: np.ndarray) -> Image.Image:
    """Build an L / LA / RGB / RGBA image from a uint8 HxW[xC] array."""
    accepted = ("accepted: uint8 arrays shaped HxW, HxWx1 (gray), HxWx2 (gray+alpha), "
                "HxWx3 (RGB) or HxWx4 (RGBA)")
    if arr.dtype != np.uint8:
        raise ImageInputError(f"unsupported array dtype {arr.dtype}; {accepted}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        mode = "L"
    elif arr.ndim == 3 and arr.shape[2] in (2, 3, 4):
        mode = {2: "LA", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
    else:
        raise ImageInputError(f"unsupported array shape {arr.shape}; {accepted}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageInputError(f"image has zero size (array shape {arr.shape})")
    img = Image.fromarray(np.ascontiguousarray(arr))
    if img.mode != mode:  # defensive: Pillow's inference should already match
        raise ImageInputError(f"cannot interpret array of shape {arr.shape} as {mode}")
    return img


def load_image(source: ImageSource) -> Image.Image:
    """Load ``source`` as a PIL image in mode L, LA, RGB or RGBA.

    ``source`` may be a path, ``bytes``, a binary file object, a PIL image or a
    uint8 numpy array (see the module docstring).  EXIF orientation is applied,
    animated images yield their first frame, and the mode is normalised with
    :func:`normalize_mode`.  Every problem is reported as :class:`ImageInputError`.
    """
    return _load(source, with_metadata=False)[0]


def load_image_with_metadata(source: ImageSource) -> tuple[Image.Image, ImageMetadata]:
    """:func:`load_image` and the source's ICC profile, EXIF and XMP (:func:`read_metadata`;
    none for a numpy array)."""
    return _load(source, with_metadata=True)


def _load(source: ImageSource, with_metadata: bool) -> tuple[Image.Image, ImageMetadata]:
    metadata = ImageMetadata()
    if isinstance(source, np.ndarray):
        return _from_array(source), metadata

    if isinstance(source, Image.Image):
        try:
            _first_frame(source)
            source.load()
        except Exception as exc:
            raise ImageInputError(f"cannot read image: {exc}") from exc
        if with_metadata:
            metadata = read_metadata(source)
        img = _exif_transpose(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        img, metadata = _decode(io.BytesIO(bytes(source)), "<bytes>", with_metadata)
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if os.path.isdir(path):
            raise ImageInputError(f"{path!r} is a directory, not an image file")
        if not os.path.exists(path):
            raise ImageInputError(f"no such file: {path!r}")
        img, metadata = _decode(path, path, with_metadata)
    elif hasattr(source, "read"):
        name = getattr(source, "name", None)
        name = str(name) if isinstance(name, (str, os.PathLike)) else "<file object>"
        img, metadata = _decode(source, name, with_metadata)  # type: ignore[arg-type]
    else:
        raise ImageInputError(
            f"unsupported image source of type {type(source).__name__}; expected a path, "
            "bytes, a binary file object, a PIL image or a uint8 numpy array"
        )

    img = normalize_mode(img)
    if img.width == 0 or img.height == 0:
        raise ImageInputError(f"image has zero size ({img.width}x{img.height})")
    return img, metadata


def _has_palette_alpha(img: Image.Image) -> bool:
    """Whether a ``P`` image carries transparency."""
    if img.info.get("transparency") is not None:
        return True
    palette = img.palette
    return palette is not None and "A" in (palette.mode or "")


def normalize_mode(img: Image.Image) -> Image.Image:
    """Convert ``img`` to one of L, LA, RGB, RGBA (rules in the module docstring)."""
    mode = img.mode
    if mode in NORMALIZED_MODES:
        return img
    try:
        if mode == "1":
            return img.convert("L")
        if mode == "P":
            return img.convert("RGBA" if _has_palette_alpha(img) else "RGB")
        if mode == "PA":
            return img.convert("RGBA")
        if mode == "RGBa":
            return img.convert("RGBA")
        if mode == "La":
            return img.convert("LA")
        if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            return img.convert("RGB")
        if mode == "I" or mode.startswith("I;16"):
            values = np.asarray(img).astype(np.int64)
            values = np.clip(values, 0, 65535)
            # round(v * 255 / 65535) == round(v / 257); there are no ties.
            gray = ((values + 128) // 257).astype(np.uint8)
            return Image.fromarray(gray)
        if mode == "F":
            values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
            gray = np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)
            return Image.fromarray(gray)
        return img.convert("RGB")
    except Exception as exc:
        raise ImageInputError(f"unsupported image mode {mode!r}: {exc}") from exc


# --------------------------------------------------------------------------
# Planes
# --------------------------------------------------------------------------

def split_alpha(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Return ``(rgb uint8 HxWx3, alpha uint8 HxW or None)``; gray is replicated."""
    img = normalize_mode(img)
    arr = np.asarray(img, dtype=np.uint8)
    if img.mode == "L":
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2)), None
    if img.mode == "LA":
        rgb = np.repeat(arr[:, :, :1], 3, axis=2)
        return np.ascontiguousarray(rgb), np.ascontiguousarray(arr[:, :, 1])
    if img.mode == "RGB":
        return np.ascontiguousarray(arr), None
    return np.ascontiguousarray(arr[:, :, :3]), np.ascontiguousarray(arr[:, :, 3])


def merge_planes(rgb: np.ndarray, alpha: np.ndarray | None, mode: str) -> Image.Image:
    """Inverse of :func:`split_alpha`: build an image of ``mode`` from the planes.

    For L/LA the RGB plane is converted to gray with ITU-R 601 luma (Pillow's
    ``convert("L")``); ``alpha`` is required for LA/RGBA and forbidden otherwise.
    """
    if mode not in NORMALIZED_MODES:
        raise ValueError(f"mode must be one of {', '.join(NORMALIZED_MODES)}, got {mode!r}")
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be a uint8 HxWx3 array, got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"rgb has zero size {rgb.shape}")
    wants_alpha = mode in ("LA", "RGBA")
    if wants_alpha:
        if alpha is None:
            raise ValueError(f"mode {mode} needs an alpha plane")
        alpha = np.asarray(alpha)
        if alpha.dtype != np.uint8 or alpha.shape != (height, width):
            raise ValueError(
                f"alpha must be a uint8 array of shape {(height, width)}, "
                f"got {alpha.dtype} {alpha.shape}"
            )
    elif alpha is not None:
        raise ValueError(f"mode {mode} has no alpha channel, but an alpha plane was given")

    base = Image.fromarray(np.ascontiguousarray(rgb))
    if mode in ("L", "LA"):
        base = base.convert("L")
    if not wants_alpha:
        return base
    base.putalpha(Image.fromarray(np.ascontiguousarray(alpha)))
    return base


def pad_to_multiple(arr: np.ndarray, multiple: int) -> np.ndarray:
    """Pad HxW[xC] ``arr`` at the bottom/right by edge replication to multiples of ``multiple``."""
    if int(multiple) != multiple or multiple < 1:
        raise ValueError(f"multiple must be a positive integer, got {multiple!r}")
    if arr.ndim < 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"cannot pad an array of shape {arr.shape}")
    height, width = arr.shape[:2]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return arr
    widths = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, widths, mode="edge")


def crop(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Return the top-left ``height`` x ``width`` region of HxW[xC] ``arr``."""
    if arr.ndim < 2:
        raise ValueError(f"cannot crop an array of shape {arr.shape}")
    if not (0 < height <= arr.shape[0] and 0 < width <= arr.shape[1]):
        raise ValueError(f"cannot crop {arr.shape[0]}x{arr.shape[1]} array to {height}x{width}")
    return np.ascontiguousarray(arr[:height, :width])


# --------------------------------------------------------------------------
# Alpha plane storage
# --------------------------------------------------------------------------

def compress_alpha(alpha: np.ndarray) -> bytes:
    """Compress a uint8 HxW alpha plane losslessly with zstandard (level 19, with the frame's
    content checksum)."""
    alpha = np.asarray(alpha)
    if alpha.dtype != np.uint8 or alpha.ndim != 2:
        raise ValueError(f"alpha must be a uint8 HxW array, got {alpha.dtype} {alpha.shape}")
    return zstandard.ZstdCompressor(level=ALPHA_ZSTD_LEVEL, write_checksum=True).compress(
        np.ascontiguousarray(alpha).tobytes()
    )


def decompress_alpha(payload: bytes, height: int, width: int) -> np.ndarray:
    """Decompress an alpha plane of ``height`` x ``width``; ``ValueError`` if corrupt."""
    if height <= 0 or width <= 0:
        raise ValueError(f"invalid alpha plane size {height}x{width}")
    expected = height * width
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as exc:
        raise ValueError(f"corrupt alpha data: {exc}") from None
    if declared != -1 and declared != expected:
        raise ValueError(
            f"corrupt alpha data: declares {declared} bytes, expected {expected} "
            f"for a {height}x{width} plane"
        )
    dctx = zstandard.ZstdDecompressor()
    try:
        try:
            raw = dctx.decompress(payload, max_output_size=expected, allow_extra_data=False)
        except TypeError:  # older zstandard without allow_extra_data
            raw = dctx.decompress(payload, max_output_size=expected)
    except zstandard.ZstdError as exc:
        raise ValueError(f"corrupt alpha data: {exc}") from None
    if len(raw) != expected:
        raise ValueError(
            f"corrupt alpha data: got {len(raw)} bytes, expected {expected} "
            f"for a {height}x{width} plane"
        )
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width).copy()


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------

def _savable_extensions() -> dict[str, str]:
    """Map of lower-case file suffix -> Pillow format name, for writable formats."""
    Image.init()
    return {
        ext.lower(): fmt
        for ext, fmt in Image.registered_extensions().items()
        if fmt.upper() in Image.SAVE
    }


def format_for_path(path: "str | os.PathLike[str]") -> str:
    """Pillow format name for ``path``'s suffix; :class:`ImageInputError` if unknown."""
    suffix = pathlib.Path(os.fspath(path)).suffix.lower()
    formats = _savable_extensions()
    if suffix in formats:
        return formats[suffix]
    examples = ", ".join(s for s in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif",
                                      ".tiff", ".ppm") if s in formats)
    what = f"suffix {suffix!r}" if suffix else "no file suffix"
    raise ImageInputError(
        f"cannot choose an output format for {os.fspath(path)!r} ({what}); "
        f"use a supported one such as {examples}"
    )


#: The usual suffix of the formats that Pillow knows several suffixes for.
_USUAL_SUFFIXES = {"JPEG": ".jpg", "TIFF": ".tif", "JPEG2000": ".jp2"}


def suffix_for_format(image_format: str) -> str:
    """The usual file suffix of a Pillow format ("PNG" -> ".png", "JPEG" -> ".jpg")."""
    if image_format in _USUAL_SUFFIXES:
        return _USUAL_SUFFIXES[image_format]
    return next((ext for ext, fmt in Image.registered_extensions().items() if fmt == image_format),
                "." + image_format.lower())


def _fallback_modes(img: Image.Image) -> list[str]:
    """Modes to retry with when a format rejects ``img``'s mode."""
    has_alpha = img.mode in ("LA", "RGBA")
    modes = ["RGBA", "RGB"] if has_alpha else ["RGB"]
    return [m for m in modes if m != img.mode] + ["L"]


def encode_image_bytes(img: Image.Image, format: str, metadata: ImageMetadata | None = None) -> bytes:
    """Encode ``img`` in Pillow ``format`` (e.g. "PNG", "JPEG") and return the bytes.

    JPEG cannot hold alpha: RGBA becomes RGB and LA becomes L silently.  If a
    format rejects the image mode, RGBA/RGB/L are tried in turn.  JPEG and WebP
    are written at quality 95.  ``metadata`` is written where the format holds it
    (:func:`vqcodec.fileio.metadata_save_options`); what it cannot hold is left out with a
    :class:`vqcodec.fileio.MetadataWarning`.
    """
    fmt = format.upper()
    Image.init()
    if fmt not in Image.SAVE:
        raise ImageInputError(f"Pillow cannot write the {format!r} format")
    img = normalize_mode(img)
    if fmt == "JPEG":
        if img.mode == "RGBA":
            img = img.convert("RGB")
        elif img.mode == "LA":
            img = img.convert("L")
    options = dict(_SAVE_OPTIONS.get(fmt, {}))
    if metadata is not None:
        options.update(metadata_save_options(fmt, metadata))
    first_error: Exception | None = None
    for mode in [img.mode] + _fallback_modes(img):
        candidate = img if mode == img.mode else img.convert(mode)
        buf = io.BytesIO()
        try:
            candidate.save(buf, format=fmt, **options)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            first_error = first_error or exc
            continue
        return buf.getvalue()
    raise ImageInputError(f"cannot encode a {img.mode} image as {fmt}: {first_error}")


def save_image(img: Image.Image, path: "str | os.PathLike[str]", *,
               format: str | None = None) -> None:
    """Write ``img`` to ``path``; the format comes from the suffix unless given.

    Writes directly to ``path`` (not atomically); use :func:`encode_image_bytes`
    for atomic writes.
    """
    fmt = format if format is not None else format_for_path(path)
    data = encode_image_bytes(img, fmt)
    with open(path, "wb") as fh:
        fh.write(data)


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def find_images(paths) -> list[pathlib.Path]:
    """Image files named by `paths`: files as given, folders searched recursively for
    PNG/JPEG/WebP/TIFF/BMP/PNM/GIF files (sorted by path). Raises ValueError if none."""
    found: list[pathlib.Path] = []
    for raw in paths:
        path = pathlib.Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*")
                                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise ValueError(f"no such file or folder: {path}")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise ValueError("no images found in " + ", ".join(str(p) for p in paths))
    return unique


def sample_image_path() -> pathlib.Path:
    """Path of the small sample photo shipped with the package (256x256 PNG)."""
    return pathlib.Path(__file__).resolve().parent / "data" / "sample.png"


def tile(pictures: list[Image.Image], columns: int | None = None, gap: int = 2,
         min_tile: int = 64) -> Image.Image:
    """A contact sheet of same-size pictures: `columns` per row (default about square),
    `gap` pixels of black between them, each scaled up by an integer factor (nearest
    neighbour) until it is at least `min_tile` pixels on its shorter side."""
    if not pictures:
        raise ValueError("no pictures to tile")
    width, height = pictures[0].size
    scale = max(1, -(-min_tile // min(width, height)))
    width, height = width * scale, height * scale
    columns = columns or math.ceil(math.sqrt(len(pictures)))
    rows = math.ceil(len(pictures) / columns)
    sheet = Image.new(pictures[0].mode, (columns * (width + gap) - gap, rows * (height + gap) - gap))
    for i, picture in enumerate(pictures):
        scaled = picture.resize((width, height), Image.NEAREST)
        sheet.paste(scaled, ((i % columns) * (width + gap), (i // columns) * (height + gap)))
    return sheet
