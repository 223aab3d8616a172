"""Pillow plugin for .vqz files, registered by `import vqcodec`.

    >>> import vqcodec
    >>> from PIL import Image
    >>> im = Image.open("photo.vqz")                   # decodes on first pixel access
    >>> im.save("copy.vqz", quality=4)                  # also model="photo", coder="zstd", ...

Opening a file reads and checks the whole container (magic, lengths, check, header
fields, metadata) but runs no model: `size`, `mode`, `info["vqz"]` (the header fields) and
the file's metadata, `info["icc_profile"]`, `info["exif"]` and `info["xmp"]` (as Pillow's
JPEG and PNG plugins give them), are known at once, and torch is imported only when the
pixels are needed (`load()`) or on save. Malformed, corrupt or unsupported files raise
:class:`vqcodec.VqzError` (a ValueError), from `Image.open` for a broken container and from
`load()` for what only decoding finds (for instance a model that is not installed). Save
parameters: `quality` (1..N, default the model's default level), `model` (a bundled model
name, default the default model), `coder` ("prior" or "zstd", vqcodec.codec.CODERS;
default the model's learned prior when it has one, else zstd),
`metadata` ("all", the default, "none" or a comma list of icc, exif, xmp: which of the
image's metadata to keep) and, as for Pillow's own formats, `icc_profile`, `exif` and `xmp`
to store instead of the image's own.
"""
from __future__ import annotations

import io

from PIL import Image, ImageFile

from . import container
from .fileio import ImageMetadata

FORMAT = "VQZ"
EXTENSION = ".vqz"
MIME = "image/x-vqz"


def _accept(prefix: bytes) -> bool:
    return prefix[: len(container.MAGIC)] == container.MAGIC


class VqzImageFile(ImageFile.ImageFile):
    format = FORMAT
    format_description = "vqcodec VQ-VAE image"

    def _open(self) -> None:
        data = self.fp.read()
        if not _accept(data):
            raise SyntaxError("not a .vqz file")
        parsed = container.unpack(data)  # VqzError for a broken file
        header = parsed.header
        self._size = (header.width, header.height)
        if isinstance(getattr(Image.Image, "mode", None), property):
            self._mode = header.mode
        else:  # Pillow < 10.1 has a plain attribute
            self.mode = header.mode
        self.info["vqz"] = header.to_dict()
        self.info.update(ImageMetadata(**parsed.metadata).to_info())  # icc_profile, exif, xmp
        self._vqz_data: bytes | None = data
        self.tile = []

    def load(self):
        if self._vqz_data is not None:
            from . import codec

            picture = codec.decode(self._vqz_data)
            if picture.size != self.size or picture.mode != self.mode:  # defensive
                raise container.VqzError(f"decoded a {picture.width}x{picture.height} {picture.mode} "
                                         f"image, header says {self.width}x{self.height} {self.mode}")
            self._vqz_data = None
            if self.fp is not None and self._exclusive_fp:
                self.fp.close()
            # Hand the decoded pixels to Pillow's raw decoder: the usual ImageFile.load path
            # then sets up the image core, closes the stream and clears the tile.
            self.fp = io.BytesIO(picture.tobytes())
            self._exclusive_fp = True
            extents = (0, 0, *self.size)
            raw_args = (self.mode, 0, 1)
            tile_type = getattr(ImageFile, "_Tile", None)
            self.tile = [tile_type("raw", extents, 0, raw_args) if tile_type else ("raw", extents, 0, raw_args)]
        return super().load()

    def load_seek(self, pos: int) -> None:
        # Defining load_seek keeps ImageFile.load from memory-mapping self.filename (the
        # .vqz file itself) as if it held raw pixels.
        self.fp.seek(pos)


def _save(im: Image.Image, fp, filename) -> None:
    from . import codec

    options = im.encoderinfo
    given = {key: options[key] for key in ("icc_profile", "exif", "xmp") if key in options}
    if given:  # Pillow's convention: these save parameters stand in for the image's own
        im = im.copy()
        im.info.update(given)
    result = codec.encode_image(im, quality=options.get("quality"), model=options.get("model"),
                                coder=options.get("coder"), metadata=options.get("metadata"))
    fp.write(result.data)


def register() -> None:
    """Register the .vqz format with Pillow (done by `import vqcodec`; safe to repeat)."""
    Image.register_open(FORMAT, VqzImageFile, _accept)
    Image.register_save(FORMAT, _save)
    Image.register_extension(FORMAT, EXTENSION)
    Image.register_mime(FORMAT, MIME)
