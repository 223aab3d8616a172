"""Exact arithmetic on integers, so that results cannot depend on summation order, threads or
hardware: integer-valued float32 tensors whose every product and partial sum stays below 2**24,
or int8 x int8 matrix products summed in int32 (the faster path where the CPU has int8 dot
products)."""
from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F

from ...cpu import has_int8_dot_product


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


CENTER = 128  # int8 holds an activation a in [0, 255] as a - 128


@functools.cache
def int8_matmul_available() -> bool:
    """Whether torch._int_mm (int8 x int8 matrix product summed in int32) runs here, exactly."""
    try:
        a = torch.tensor([[-128, 127, 3], [5, -7, 127]], dtype=torch.int8)
        b = a.t().contiguous()
        return bool(torch.equal(torch._int_mm(a, b).long(), a.long() @ b.long()))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


class Int8Affine:
    """y = floor((x . W + bias) / 2**shift) for activations x in [0, 255], exactly: x enters as
    x - 128 (int8), W holds integer weights in [-127, 127] (int8), and 128 x sum(W) moves into
    the bias. weight (M, K), bias (M,), shift (M,): integer-valued tensors; shift >= 0.
    centered_output: y - 128 instead (128 x 2**shift taken from the bias: the same floor), for
    an activation that enters the next product centred (activation_int8).

    The products x . W run as int8 x int8 summed in int32 (torch._int_mm) where the CPU has
    int8 dot-product instructions (cpu.has_int8_dot_product) or where float32 would not be
    exact, and otherwise as float32 products of the same integers, exact while
    K x 128 x max|W| < 2**24 (in any summation order, under exact_float32): the same integers
    either way."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, shift: torch.Tensor, centered_output: bool = False):
        exact_in_float32 = weight.shape[1] * CENTER * int(weight.abs().max()) < 1 << 24
        int8_products = has_int8_dot_product() or not exact_in_float32
        self.weight = weight.to(torch.int8 if int8_products else torch.float32).t().contiguous()  # (K, M)
        offset = bias + CENTER * weight.sum(1)
        if centered_output:
            offset = offset - CENTER * power_of_two(shift)
        self.offset = offset.to(torch.int32)
        self.shift = shift.to(torch.int32)

    def __call__(self, centered: torch.Tensor) -> torch.Tensor:
        """(N, K) int8 -> (N, M) int32. (contiguous: a reshaped view of windows, as for grids one
        position wide, can have overlapping rows, which the int8 product misreads)"""
        if self.weight.dtype == torch.int8:
            product = torch._int_mm(centered.contiguous(), self.weight)
        else:
            product = torch.mm(centered.float(), self.weight).int()
        return product.add_(self.offset).bitwise_right_shift_(self.shift)


def activation_int8(centered: torch.Tensor) -> torch.Tensor:
    """An Int8Affine's centred output (centered_output) -> its activation, a bounded ReLU to
    [0, 255], as the next product's int8 input (a - 128)."""
    return centered.clamp_(-CENTER, CENTER - 1).to(torch.int8)


def blank_padded(p: int, h: int, w: int, c: int) -> torch.Tensor:
    """(P, H + 2, W + 2, C) int8 activations 0 as centered values (-128): the 'same' padding,
    and the value of every position a trunk leaves uncomputed."""
    return torch.full((p, h + 2, w + 2, c), -CENTER, dtype=torch.int8)


def padded_int8(pre: torch.Tensor) -> torch.Tensor:
    """Integer pre-activations (P, H, W, C) (float) -> their activations clamp(pre, 0, 255)
    as int8 (a - 128), padded to (P, H + 2, W + 2, C) with activation 0 ('same' padding)."""
    padded = blank_padded(*pre.shape)
    padded[:, 1:-1, 1:-1] = (pre - CENTER).clamp_(-CENTER, CENTER - 1)  # integers: the cast is exact
    return padded


def windows3x3(padded: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """The 3x3 windows of a padded (P, H + 2, W + 2, C) grid, one row per position (rows ordered
    by pass, then position; columns by row offset, column offset, channel): (P * n, 9 C) for
    the (n, 2) `positions` (row, column), or for every position in row-major order."""
    p, h, w, c = padded.shape[0], padded.shape[1] - 2, padded.shape[2] - 2, padded.shape[3]
    if positions is None:
        s = padded.stride()
        return padded.as_strided((p, h, w, 3, 3, c), (s[0], s[1], s[2], s[1], s[2], s[3])).reshape(-1, 9 * c)
    offsets = torch.arange(3).view(3, 1) * (w + 2) + torch.arange(3).view(1, 3)  # (3, 3)
    top_left = positions[:, 0] * (w + 2) + positions[:, 1]
    flat = (top_left.view(-1, 1, 1) + offsets).view(1, -1)  # (1, n * 9)
    if p > 1:
        flat = flat + torch.arange(p).view(-1, 1) * ((h + 2) * (w + 2))
    return padded.view(-1, c).index_select(0, flat.view(-1)).view(-1, 9 * c)  # index_select: fast gathers


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
