"""File-level I/O that is not pixels: atomic writes, and the metadata of image files.

Atomic writes: a temporary file in the destination folder, then a rename, so that a reader
never sees half a file and an error leaves nothing behind.

Metadata: the ICC profile, EXIF and XMP that vqcodec carries from an image file into a .vqz
file and back (:class:`ImageMetadata`). :func:`read_metadata` takes them from an input image
before its EXIF orientation is applied to the pixels, and makes EXIF and XMP say orientation 1
(the EXIF Orientation entry is rewritten in place, every other byte kept; XMP's
``tiff:Orientation`` likewise); malformed metadata is left out with a :class:`MetadataWarning`
and never stops the pixels. :func:`metadata_save_options` writes them with Pillow into the
formats that hold them (:data:`METADATA_FORMATS`: PNG, JPEG, WebP, TIFF) and warns about what
it leaves out. No numpy or torch here (the Pillow plugin uses this module when it opens a file).
"""
from __future__ import annotations

import os
import re
import struct
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .container import METADATA_KINDS as _CONTAINER_KINDS


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> None:
    """Write `data` to `path` atomically. With overwrite=False an existing file is an error
    (FileExistsError), checked again just before the rename."""
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists (use --force to overwrite)")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if not overwrite:
            # link() fails if the target appeared meanwhile; rename() would replace it.
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# ------------------------------------------------------------------ metadata


class MetadataWarning(UserWarning):
    """Metadata left out: malformed in an input image (whose pixels are still encoded), or
    more than an output format holds."""


#: The metadata kinds vqcodec keeps, in file order: ICC profile, EXIF, XMP.
METADATA_KINDS: tuple[str, ...] = tuple(_CONTAINER_KINDS)

#: What the encoder keeps of an input's metadata unless told otherwise: all of it, as avifenc and
#: cjxl do, so that colours, capture date and camera come back on decode (README, "Metadata").
DEFAULT_METADATA = "all"

#: Metadata each output format gets (images.encode_image_bytes; Pillow format name -> kinds).
METADATA_FORMATS: dict[str, tuple[str, ...]] = {fmt: METADATA_KINDS for fmt in ("PNG", "JPEG", "WEBP", "TIFF")}

_EXIF_PREFIX = b"Exif\x00\x00"  # JPEG's APP1 marker and Pillow's info["exif"] start with it
_ORIENTATION = 0x0112
# Descriptive IFD0 tags kept when EXIF comes from (or goes to) a TIFF file's own IFD, whose
# structural tags (sizes, strip offsets, compression, ...) describe that file, not the photo.
_EXIF_IFD0_TAGS = (270, 271, 272, _ORIENTATION, 282, 283, 296, 305, 306, 315, 316, 318, 319, 529, 531, 33432)
_EXIF_SUB_IFDS = (0x8769, 0x8825)  # Exif IFD, GPS IFD
_JPEG_MARKER_BYTES = 65533  # Pillow's limit for one APP1 marker's data (EXIF, XMP)
_XMP_ORIENTATION = (re.compile(rb'(tiff:Orientation=")[0-9](")'),
                    re.compile(rb"(<tiff:Orientation>)[0-9](</tiff:Orientation>)"))


def _as_bytes(value) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, Image.Exif):
        return value.tobytes()
    return bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else None


@dataclass(frozen=True)
class ImageMetadata:
    """The metadata vqcodec carries from an image file to a .vqz file and back, None where
    absent: ``icc`` (ICC colour profile), ``exif`` (EXIF in TIFF structure, without the
    "Exif\\0\\0" prefix) and ``xmp`` (an XMP packet, UTF-8)."""

    icc: bytes | None = None
    exif: bytes | None = None
    xmp: bytes | None = None

    def items(self) -> dict[str, bytes]:
        """kind -> bytes of what is present, in METADATA_KINDS order."""
        return {kind: getattr(self, kind) for kind in METADATA_KINDS if getattr(self, kind)}

    def select(self, kinds: Iterable[str]) -> "ImageMetadata":
        """Only the given kinds."""
        kinds = set(kinds)
        return ImageMetadata(**{k: v for k, v in self.items().items() if k in kinds})

    def to_info(self) -> dict[str, bytes]:
        """As Pillow's ``Image.info`` holds them: ``icc_profile``, ``exif`` (with its
        "Exif\\0\\0" prefix, as JPEG and PNG images have it) and ``xmp``."""
        info = {}
        if self.icc:
            info["icc_profile"] = self.icc
        if self.exif:
            info["exif"] = _EXIF_PREFIX + self.exif
        if self.xmp:
            info["xmp"] = self.xmp
        return info

    @classmethod
    def from_info(cls, info: dict) -> "ImageMetadata":
        """What a Pillow ``Image.info`` holds under ``icc_profile``, ``exif`` and ``xmp``, as is
        (EXIF without its prefix)."""
        exif = _as_bytes(info.get("exif"))
        if exif is not None and exif.startswith(_EXIF_PREFIX):
            exif = exif[len(_EXIF_PREFIX):]
        return cls(icc=_as_bytes(info.get("icc_profile")) or None, exif=exif or None,
                   xmp=_as_bytes(info.get("xmp")) or None)


def metadata_kinds(spec: "str | Iterable[str]") -> tuple[str, ...]:
    """``"all"``, ``"none"`` or a comma list of ``icc``, ``exif``, ``xmp`` (or an iterable of
    those names) -> the kinds, in METADATA_KINDS order. ``ValueError`` for anything else."""
    words = [w.strip().lower() for w in spec.split(",")] if isinstance(spec, str) else list(spec)
    if words == ["all"]:
        return METADATA_KINDS
    if words in (["none"], []):
        return ()
    unknown = [w for w in words if w not in METADATA_KINDS]
    if unknown:
        raise ValueError(f"unknown metadata kind {unknown[0]!r}: use all, none, or a comma list of "
                         f"{', '.join(METADATA_KINDS)}")
    return tuple(k for k in METADATA_KINDS if k in words)


def _exif_upright(exif: bytes) -> bytes:
    """``exif`` (TIFF structure) with its IFD0 Orientation set to 1, every other byte kept.
    ValueError if the structure is malformed."""
    if len(exif) < 8:
        raise ValueError(f"{len(exif)} bytes is too short for a TIFF header")
    order = {b"II": "<", b"MM": ">"}.get(exif[:2])
    if order is None:
        raise ValueError("it does not start with a TIFF byte-order mark (II or MM)")
    magic, ifd = struct.unpack_from(order + "HI", exif, 2)
    if magic != 42:
        raise ValueError(f"bad TIFF magic number {magic}")
    if ifd < 8 or ifd + 2 > len(exif):
        raise ValueError(f"IFD0 offset {ifd} is outside the {len(exif)}-byte block")
    count = struct.unpack_from(order + "H", exif, ifd)[0]
    if ifd + 2 + 12 * count > len(exif):
        raise ValueError(f"IFD0's {count} entries run past the end of the block")
    out = bytearray(exif)
    for i in range(count):
        at = ifd + 2 + 12 * i
        tag, kind, n = struct.unpack_from(order + "HHI", exif, at)
        if tag == _ORIENTATION:
            if kind != 3 or n != 1:
                raise ValueError("its Orientation tag is not one SHORT value")
            struct.pack_into(order + "H", out, at + 8, 1)
    return bytes(out)


def _xmp_upright(xmp: bytes) -> bytes:
    for pattern in _XMP_ORIENTATION:
        xmp = pattern.sub(rb"\g<1>1\g<2>", xmp)
    return xmp


def _descriptive_exif(tags: Image.Exif, extra: dict | None = None) -> bytes | None:
    """The descriptive part of ``tags`` (IFD0 tags of _EXIF_IFD0_TAGS, the Exif and GPS
    IFDs) plus ``extra`` tags, as EXIF bytes (TIFF structure), or None if nothing is left."""
    kept = Image.Exif()
    for tag in _EXIF_IFD0_TAGS:
        if tag in tags:
            kept[tag] = tags[tag]
    for tag in _EXIF_SUB_IFDS:
        sub = tags.get_ifd(tag)
        if sub:
            kept.get_ifd(tag).update(sub)
    for tag, value in (extra or {}).items():
        kept[tag] = value
    if not len(kept) and not any(kept.get_ifd(tag) for tag in _EXIF_SUB_IFDS):
        return None
    return kept.tobytes()[len(_EXIF_PREFIX):]


def _and_list(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def metadata_warning(message: str) -> None:
    """Warn (MetadataWarning) that some metadata is left out."""
    warnings.warn(message, MetadataWarning, stacklevel=3)


def read_metadata(img: Image.Image) -> ImageMetadata:
    """The ICC profile, EXIF and XMP of an input image (before its orientation is applied),
    made to say orientation 1. Malformed metadata is left out with a MetadataWarning."""
    found = ImageMetadata.from_info(img.info)
    icc, exif, xmp = found.icc, found.exif, found.xmp
    try:
        if exif is None and img.format == "TIFF":  # the file's own IFD holds the EXIF tags
            exif = _descriptive_exif(img.getexif())
        elif exif is None and "Raw profile type exif" in img.info:  # ImageMagick's PNG text chunk
            exif = bytes.fromhex("".join(str(img.info["Raw profile type exif"]).split("\n")[3:]))
            exif = exif[len(_EXIF_PREFIX):] if exif.startswith(_EXIF_PREFIX) else exif
    except Exception as error:  # Pillow's EXIF parser raises many kinds of errors
        metadata_warning(f"EXIF left out: it cannot be read ({error})")
        exif = None
    if icc is not None and (len(icc) < 128 or icc[36:40] != b"acsp"):
        metadata_warning("ICC profile left out: it is not an ICC profile (no 'acsp' signature)")
        icc = None
    if exif is not None:
        try:
            exif = _exif_upright(exif)
        except (ValueError, struct.error) as error:
            metadata_warning(f"EXIF left out: malformed ({error})")
            exif = None
    if xmp is not None:
        try:
            xmp.decode("utf-8")
        except UnicodeDecodeError:
            metadata_warning("XMP left out: it is not UTF-8 text")
            xmp = None
        else:
            xmp = _xmp_upright(xmp)
    return ImageMetadata(icc=icc, exif=exif, xmp=xmp)


def metadata_save_options(fmt: str, metadata: ImageMetadata) -> dict[str, object]:
    """Pillow save options that write ``metadata`` into format ``fmt`` (METADATA_FORMATS);
    what the format cannot hold is left out with a MetadataWarning."""
    present = metadata.items()
    kept = {k: v for k, v in present.items() if k in METADATA_FORMATS.get(fmt, ())}
    if fmt == "JPEG":  # one APP1 marker each
        for kind, overhead in (("exif", len(_EXIF_PREFIX)), ("xmp", 29)):
            if kind in kept and len(kept[kind]) + overhead > _JPEG_MARKER_BYTES:
                del kept[kind]
    left_out = [k for k in present if k not in kept]
    if left_out:
        names = {"icc": "ICC profile", "exif": "EXIF", "xmp": "XMP"}
        metadata_warning(f"{fmt} output cannot hold the {_and_list([names[k] for k in left_out])}; left out")
    icc, exif, xmp = (kept.get(kind) for kind in METADATA_KINDS)
    options: dict[str, object] = {"icc_profile": icc}  # also overrides the image's own info
    if fmt == "TIFF":  # EXIF tags and XMP (tag 700) go into the file's own IFD
        tags = Image.Exif()
        try:
            if exif:
                tags.load(exif)
            descriptive = _descriptive_exif(tags, {700: xmp} if xmp else None) if exif or xmp else None
        except Exception as error:  # Pillow's EXIF parser raises many kinds of errors
            metadata_warning(f"EXIF and XMP left out of the TIFF output: the EXIF cannot be read ({error})")
            descriptive = None
        if descriptive:
            options["exif"] = descriptive
    elif fmt == "PNG":
        if exif:
            options["exif"] = exif
        if xmp:
            from PIL.PngImagePlugin import PngInfo

            text = PngInfo()
            text.add_itxt("XML:com.adobe.xmp", xmp)
            options["pnginfo"] = text
    else:
        if exif:
            options["exif"] = _EXIF_PREFIX + exif if fmt == "JPEG" else exif
        if xmp:
            options["xmp"] = xmp
    return options
