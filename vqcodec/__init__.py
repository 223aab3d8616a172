"""vqcodec: a lossy image codec built on a trained VQ-VAE.

    >>> import vqcodec
    >>> data = vqcodec.encode("photo.png", quality=4)   # .vqz bytes
    >>> image = vqcodec.decode(data)                      # PIL.Image
    >>> tokens = vqcodec.read_indices(data)               # index grids, layer by layer
    >>> same = vqcodec.decode_indices(tokens)             # the same pixels as `image`

torch is imported on first use of encode/decode/read_indices/decode_indices/load_model/
list_models, so that `import vqcodec` and `vqcodec --help` stay quick.

`import vqcodec` also registers the .vqz format with Pillow (vqcodec.pil_plugin), so that
`PIL.Image.open("photo.vqz")` decodes and `image.save("photo.vqz", quality=4)` encodes;
that imports PIL.Image, but not torch or numpy.
"""
__version__ = "0.1.0"

from .container import VqzError
from .pil_plugin import register as _register_pil_plugin

_register_pil_plugin()

__all__ = ["encode", "decode", "read_indices", "decode_indices", "Indices", "IndexLayer", "list_models",
           "load_model", "keep_freed_memory", "VqzError", "__version__"]

_LAZY = {"encode": "codec", "decode": "codec", "read_indices": "codec", "decode_indices": "codec",
         "Indices": "codec", "IndexLayer": "codec", "load_model": "codec", "list_models": "zoo",
         "keep_freed_memory": "allocator"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'vqcodec' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
