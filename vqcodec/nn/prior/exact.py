"""Exact arithmetic on integer-valued float32 tensors: every product and partial sum stays an
integer below 2**24, so results cannot depend on summation order, threads or hardware."""
from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F


def exact_conv3x3(act: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """3x3 'same' convolution plus bias of integer-valued float32 tensors, exactly.

    The fast path is torch's CPU convolution with NNPACK (Winograd / FFT, inexact) switched
    off, which leaves direct or GEMM convolution: sums of exact products, exact in any
    order below 2**24. Its output is checked to be integral; if it is not (some other
    algorithm ran), the result is recomputed as nine shifted matmuls."""
    c_out, c_in = weight.shape[0], act.shape[1]
    kernel = weight.view(c_out, c_in, 3, 3)
    if act.device.type == "cpu":
        with torch.backends.nnpack.flags(enabled=False):
            out = F.conv2d(act, kernel, bias, padding=1)
        if bool(torch.equal(out, torch.round(out))):
            return out
    return conv3x3_by_shifts(act, kernel).add_(bias.view(1, -1, 1, 1))


def conv3x3_by_shifts(act: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The same convolution as nine matmuls of shifted windows (exact by construction)."""
    c_out, c_in = kernel.shape[:2]
    padded = F.pad(act, (1, 1, 1, 1))
    p, _, h, w = act.shape
    out = torch.zeros(p, c_out, h * w, dtype=act.dtype, device=act.device)
    for dy in range(3):
        for dx in range(3):
            window = padded[:, :, dy:dy + h, dx:dx + w].reshape(p, c_in, h * w)
            out += torch.matmul(kernel[:, :, dy, dx], window)
    return out.view(p, c_out, h, w)


def power_of_two(exponent: torch.Tensor) -> torch.Tensor:
    """2.0 ** exponent for small integer exponents, built from the float32 bit pattern
    (exact by construction, unlike a library exp2)."""
    return ((exponent.to(torch.int32) + 127) << 23).view(torch.float32)


def _precision_settings() -> list:
    """(read, write, full-precision value) of each torch setting that may lower float32 precision."""
    backends = torch.backends
    if hasattr(backends, "fp32_precision"):  # torch >= 2.9: one setting per backend and operation
        return [(functools.partial(getattr, part, "fp32_precision"), functools.partial(setattr, part, "fp32_precision"),
                 "ieee") for part in (backends.cuda.matmul, backends.mkldnn.matmul, backends.mkldnn.conv)]
    return [(torch.get_float32_matmul_precision, torch.set_float32_matmul_precision, "highest"),
            (lambda: backends.cuda.matmul.allow_tf32, lambda value: setattr(backends.cuda.matmul, "allow_tf32", value),
             False)]


@contextlib.contextmanager
def exact_float32():
    """Full-precision float32 matmuls and CPU convolutions (no TF32 / bf16 shortcuts) inside the
    block. torch's settings are process-wide: they are restored exactly on leaving it, and read
    and written through one API only (torch refuses to read settings left half in each)."""
    settings = _precision_settings()
    saved = [read() for read, _, _ in settings]
    try:
        for _, write, value in settings:
            write(value)
        yield
    finally:
        for (_, write, _), value in zip(settings, saved):
            write(value)
