"""Context model over residual-VQ index grids: the learned prior that codes (and samples) indices.

Indices are coded stage by stage; within a stage, in two checkerboard halves (anchors
(row + col even) first, then the rest), so the whole grid takes 2 network passes per
stage instead of one per position (He et al. 2021, "Checkerboard Context Model for
Efficient Learned Image Compression"). Predicting stage s at a position sees:

    every earlier stage t < s at every position ── sum of per-stage embeddings ─┐
    stage s at the anchors (second half only)    ── embedding, zero elsewhere ───┤
    which stage and half this pass is            ── learned bias ────────────────┤
                                                                                  v
                 clamp to [0, 255]  ─>  [3x3 conv ─> floor, clamp to [0, 255]] x L  ─>
                 1x1 head of stage s ─> logits in 1/16 bit steps ─> frequency table ─> CDF

Every quantity in that path is an integer. The network is trained with fake quantization
(ContextPrior) and shipped as integer tensors (IntegerPrior), which evaluates the same
formulas in float32 arithmetic on integers whose every partial sum stays below 2**24, so
every product and sum is exact and the result cannot depend on summation order, thread
count, batch size or hardware (Balle et al. 2019, "Integer Networks for Data Compression").
"""
from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import nn

from ..config import PriorConfig

ACTIVATION_BITS = 5  # activations are integers a with real value a / 2**5
ACTIVATION_MAX = 255  # ... in [0, 255]: a bounded ReLU
WEIGHT_MAX = 127  # integer weights in [-127, 127], one power-of-two scale per output
LOGIT_STEPS = 16  # integer logits count 1/16 bit: p(k) proportional to 2 ** (logit_k / 16)
FREQ_BITS = 15  # the most likely symbol gets frequency 2**15
TABLE_SIZE = FREQ_BITS * LOGIT_STEPS + 1  # table[d] = round(2**15 * 2**(-d/16)); d >= 240 -> 1
MAX_EXPONENT = 12  # weight scales 2**0 .. 2**12
EMBED_MAX = 1 << 12  # bound on integer embedding entries and pass biases
BIAS_MAX = 1 << 22  # bound on integer conv and head biases: |sum + bias| < 2**24 stays exact


def check_exact(cfg: PriorConfig) -> None:
    """The largest partial sum of a 3x3 conv must stay below 2**24 for exact float32 sums."""
    if ACTIVATION_MAX * WEIGHT_MAX * 9 * cfg.channels + BIAS_MAX >= 1 << 24:
        raise ValueError(f"prior channels={cfg.channels} is too wide for exact float32 arithmetic")


def frequency_table() -> torch.Tensor:
    """table[d] = max(1, round(2**15 * 2**(-d/16))) for d = 0..240 (int32)."""
    d = torch.arange(TABLE_SIZE, dtype=torch.float64)
    return torch.clamp(torch.round(2.0 ** FREQ_BITS * torch.exp2(-d / LOGIT_STEPS)), min=1).to(torch.int32)


def checkerboard(rows: int, cols: int, device=None) -> torch.Tensor:
    """Boolean (rows, cols) mask of the anchors: (row + col) even."""
    r = torch.arange(rows, device=device).view(-1, 1)
    c = torch.arange(cols, device=device).view(1, -1)
    return (r + c) % 2 == 0


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def _floor_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.floor(x) - x).detach()


def _exponents(weight: torch.Tensor) -> torch.Tensor:
    """Per output row, the largest e with max|w| * 2**e <= WEIGHT_MAX (clamped to [0, 12])."""
    peak = weight.detach().abs().amax(dim=-1).clamp(min=1e-12)
    return torch.floor(torch.log2(WEIGHT_MAX / peak)).clamp(0, MAX_EXPONENT)


class ContextPrior(nn.Module):
    """The trainable prior: float parameters, fake-quantized in the forward pass so that
    what it learns is what IntegerPrior computes."""

    def __init__(self, cfg: PriorConfig):
        super().__init__()
        check_exact(cfg)
        self.config = cfg
        s, k, c = cfg.num_stages, cfg.codebook_size, cfg.channels
        self.previous_embed = nn.Parameter(torch.randn(s, k, c) * 0.3)
        self.current_embed = nn.Parameter(torch.randn(s, k, c) * 0.3)
        self.pass_bias = nn.Parameter(torch.full((s, 2, c), 0.5))
        self.conv_weight = nn.ParameterList(
            nn.Parameter(torch.randn(c, 9 * c) / math.sqrt(9 * c)) for _ in range(cfg.layers))
        self.conv_bias = nn.ParameterList(nn.Parameter(torch.zeros(c)) for _ in range(cfg.layers))
        self.head_weight = nn.Parameter(torch.randn(s, k, c) / math.sqrt(c))
        self.head_bias = nn.Parameter(torch.zeros(s, k))

    @staticmethod
    def _quantize_embedding(table: torch.Tensor) -> torch.Tensor:
        scale = 2.0 ** ACTIVATION_BITS
        return torch.clamp(_round_ste(table * scale), -EMBED_MAX, EMBED_MAX) / scale

    @staticmethod
    def _quantize_weight(weight: torch.Tensor, bias: torch.Tensor, bias_bits: int):
        """(weight, bias) on their integer grids; scale 2**e per output row."""
        scale = 2.0 ** _exponents(weight)
        w = torch.clamp(_round_ste(weight * scale.unsqueeze(-1)), -WEIGHT_MAX, WEIGHT_MAX) / scale.unsqueeze(-1)
        b_scale = scale * 2.0 ** bias_bits
        return w, torch.clamp(_round_ste(bias * b_scale), -BIAS_MAX, BIAS_MAX) / b_scale

    def forward(self, indices: torch.Tensor, stage: torch.Tensor, half: int) -> torch.Tensor:
        """Logits in bits (B, K, H, W) for stage[b] of each example, pass `half` (0 anchors, 1 rest).

        indices (B, S, H, W) are the true indices (teacher forcing)."""
        cfg = self.config
        b, s_total, h, w = indices.shape
        a_max = ACTIVATION_MAX / 2.0 ** ACTIVATION_BITS
        previous = self._quantize_embedding(self.previous_embed)  # (S, K, C)
        # embeddings of every stage at every position, then the sum over stages < stage[b]
        per_stage = torch.stack([previous[t][indices[:, t]] for t in range(s_total)], dim=1)  # B,S,H,W,C
        cumulative = torch.cat([torch.zeros_like(per_stage[:, :1]), per_stage.cumsum(1)], dim=1)
        x = cumulative[torch.arange(b), stage]  # (B, H, W, C)
        if half == 1:
            current = self._quantize_embedding(self.current_embed)
            anchors = checkerboard(h, w, indices.device).unsqueeze(-1)
            x = x + current[stage.view(-1, 1, 1), indices[torch.arange(b), stage]] * anchors
        x = x + self._quantize_embedding(self.pass_bias)[stage, half].view(b, 1, 1, -1)
        act = torch.clamp(x, 0, a_max).permute(0, 3, 1, 2)  # (B, C, H, W)
        for weight, bias in zip(self.conv_weight, self.conv_bias):
            w_q, b_q = self._quantize_weight(weight, bias, ACTIVATION_BITS)
            y = torch.einsum("oi,bip->bop", w_q, F.unfold(act, 3, padding=1)) + b_q.view(1, -1, 1)
            act = torch.clamp(_floor_ste(y * 2.0 ** ACTIVATION_BITS), 0, ACTIVATION_MAX).view(b, -1, h, w)
            act = act / 2.0 ** ACTIVATION_BITS
        w_q, b_q = self._quantize_weight(self.head_weight, self.head_bias, ACTIVATION_BITS)
        logits = torch.einsum("bkc,bchw->bkhw", w_q[stage], act) + b_q[stage].view(b, -1, 1, 1)
        return _floor_ste(logits * LOGIT_STEPS) / LOGIT_STEPS

    def loss_bits(self, indices: torch.Tensor, stage: torch.Tensor) -> torch.Tensor:
        """Mean code length in bits per index of stage[b], both checkerboard halves."""
        b, _, h, w = indices.shape
        anchors = checkerboard(h, w, indices.device)
        target = indices[torch.arange(b), stage]  # (B, H, W)
        total = indices.new_zeros((), dtype=torch.float32)
        for half, mask in ((0, anchors), (1, ~anchors)):
            logits = self(indices, stage, half) * math.log(2)
            nll = F.cross_entropy(logits, target, reduction="none") / math.log(2)
            total = total + (nll * mask).sum()
        return total / (b * h * w)

    @torch.no_grad()
    def to_integer(self) -> dict[str, torch.Tensor]:
        """The integer tensors IntegerPrior runs on (what ships in the weights file)."""
        scale = 2.0 ** ACTIVATION_BITS
        out = {
            "previous_embed": torch.clamp(torch.round(self.previous_embed * scale), -EMBED_MAX, EMBED_MAX),
            "current_embed": torch.clamp(torch.round(self.current_embed * scale), -EMBED_MAX, EMBED_MAX),
            "pass_bias": torch.clamp(torch.round(self.pass_bias * scale), -EMBED_MAX, EMBED_MAX),
            "freq_table": frequency_table(),
        }
        layers = [(f"conv{i}", w, b) for i, (w, b) in enumerate(zip(self.conv_weight, self.conv_bias))]
        for name, weight, bias in layers + [("head", self.head_weight, self.head_bias)]:
            e = _exponents(weight)
            out[f"{name}_weight"] = torch.clamp(torch.round(weight * 2.0 ** e.unsqueeze(-1)), -WEIGHT_MAX, WEIGHT_MAX)
            out[f"{name}_bias"] = torch.clamp(torch.round(bias * 2.0 ** (e + ACTIVATION_BITS)), -BIAS_MAX, BIAS_MAX)
            out[f"{name}_exponent"] = e
        return {k: v.to(torch.int32) for k, v in out.items()}


class IntegerPrior:
    """Integer-exact evaluation of a trained prior: integer CDF frequencies per pass.

    All tensors hold integers (float32 for fast exact matmuls); see the module docstring."""

    def __init__(self, cfg: PriorConfig, tensors: dict[str, torch.Tensor]):
        check_exact(cfg)
        self.config = cfg
        s, k, c = cfg.num_stages, cfg.codebook_size, cfg.channels
        expected = {"previous_embed": (s, k, c), "current_embed": (s, k, c), "pass_bias": (s, 2, c),
                    "freq_table": (TABLE_SIZE,), "head_weight": (s, k, c), "head_bias": (s, k),
                    "head_exponent": (s, k)}
        for i in range(cfg.layers):
            expected.update({f"conv{i}_weight": (c, 9 * c), f"conv{i}_bias": (c,), f"conv{i}_exponent": (c,)})
        for name, shape in expected.items():
            if name not in tensors or tuple(tensors[name].shape) != shape:
                raise ValueError(f"prior tensor {name}: expected shape {shape}")
        limits = {"weight": WEIGHT_MAX, "exponent": MAX_EXPONENT, "embed": EMBED_MAX, "pass_bias": EMBED_MAX,
                  "_bias": BIAS_MAX}
        for name in expected:
            t = tensors[name]
            bound = next((v for key, v in limits.items() if name.endswith(key)), None)
            if bound is not None and int(t.abs().max()) > bound or name.endswith("exponent") and int(t.min()) < 0:
                raise ValueError(f"prior tensor {name} is out of range")
        table = tensors["freq_table"]
        if int(table.min()) < 1 or int(table.max()) > 1 << FREQ_BITS:
            raise ValueError("prior frequency table is out of range")
        self.t = {name: tensors[name].to(torch.float32) for name in expected}
        self.freq_table = table.to(torch.float32)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: t.to(torch.int32) for name, t in self.t.items()}

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        """x (P, C, H, W) integer pre-activations -> (P, C, H, W) integer activations."""
        act = x.clamp(0, ACTIVATION_MAX)
        for i in range(self.config.layers):
            weight, bias = self.t[f"conv{i}_weight"], self.t[f"conv{i}_bias"]
            shift = _power_of_two(-self.t[f"conv{i}_exponent"]).view(1, -1, 1, 1)
            acc = _exact_conv3x3(act, weight) + bias.view(1, -1, 1, 1)
            act = torch.floor(acc * shift).clamp(0, ACTIVATION_MAX)
        return act

    def pass_inputs(self, previous: torch.Tensor, indices_stage: torch.Tensor | None,
                    stage: int, half: int) -> torch.Tensor:
        """Pre-activation (C, H, W) of one pass.

        previous: (C, H, W) sum of the earlier stages' embeddings; indices_stage: (H, W) this
        stage's indices (only the anchors are read, and only when half == 1)."""
        x = previous + self.t["pass_bias"][stage, half].view(-1, 1, 1)
        if half == 1:
            h, w = indices_stage.shape
            anchors = checkerboard(h, w)
            x = x + self.t["current_embed"][stage][indices_stage].permute(2, 0, 1) * anchors
        return x

    def stage_embedding(self, stage: int, indices_stage: torch.Tensor) -> torch.Tensor:
        """(C, H, W) embedding of one stage's indices, added to `previous` once it is known."""
        return self.t["previous_embed"][stage][indices_stage].permute(2, 0, 1)

    def frequencies(self, inputs: torch.Tensor, stages: list[int], masks: list[torch.Tensor]) -> list[torch.Tensor]:
        """For P passes at once: inputs (P, C, H, W), stage of each pass, and the positions
        (H, W) bool each pass codes. Returns per pass an (n, K) array of integer frequencies
        in [1, 2**15] (as float32), rows in row-major position order. Identical whether passes are evaluated together or not."""
        with _exact_float32():
            act = self._trunk(inputs)
            out = []
            for p, (stage, mask) in enumerate(zip(stages, masks)):
                h = act[p][:, mask].t()  # (n, C)
                weight, bias = self.t["head_weight"][stage], self.t["head_bias"][stage]
                shift = _power_of_two(int(math.log2(LOGIT_STEPS)) - ACTIVATION_BITS - self.t["head_exponent"][stage])
                logits = torch.floor((torch.matmul(h, weight.t()) + bias) * shift)
                distance = (logits.amax(dim=1, keepdim=True) - logits).clamp_(max=TABLE_SIZE - 1)
                out.append(self.freq_table[distance.to(torch.int32)])
        return out


def _exact_conv3x3(act: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """3x3 'same' convolution of integer-valued float32 tensors, exactly.

    The fast path is torch's CPU convolution with NNPACK (Winograd / FFT, inexact) switched
    off, which leaves direct or GEMM convolution: sums of exact products, exact in any
    order below 2**24. Its output is checked to be integral; if it is not (some other
    algorithm ran), the result is recomputed as nine shifted matmuls."""
    c_out, c_in = weight.shape[0], act.shape[1]
    kernel = weight.view(c_out, c_in, 3, 3)
    if act.device.type == "cpu":
        with torch.backends.nnpack.flags(enabled=False):
            out = F.conv2d(act, kernel, padding=1)
        if bool(torch.equal(out, torch.round(out))):
            return out
    return _conv3x3_by_shifts(act, kernel)


def _conv3x3_by_shifts(act: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
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


def _power_of_two(exponent: torch.Tensor) -> torch.Tensor:
    """2.0 ** exponent for small integer exponents, built from the float32 bit pattern
    (exact by construction, unlike a library exp2)."""
    return ((exponent.to(torch.int32) + 127) << 23).view(torch.float32)


class _exact_float32:
    """Full-precision float32 matmuls (no TF32 / bf16 shortcuts) inside the block."""

    def __enter__(self):
        self.saved = torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        torch.set_float32_matmul_precision(self.saved[0])
        torch.backends.cuda.matmul.allow_tf32 = self.saved[1]


def _pass_schedule(num_stages: int, rows: int, cols: int):
    """The coding order: (stage, half, mask of the positions coded) for every non-empty pass."""
    anchors = checkerboard(rows, cols)
    for stage in range(num_stages):
        for half, mask in ((0, anchors), (1, ~anchors)):
            if bool(mask.any()):
                yield stage, half, mask


PASS_CHUNK_POSITIONS = 1 << 16  # encoder: passes evaluated together, bounded by rows*cols*passes


def encode_passes(prior: IntegerPrior, indices: torch.Tensor):
    """Known indices (q, H, W) -> [(stage, symbols (n,), frequencies (n, K))] in coding order.

    All passes are evaluated in a few batched network calls; the integer arithmetic makes
    that identical to the decoder's one pass at a time."""
    q, rows, cols = indices.shape
    indices = indices.long()
    previous = torch.zeros(prior.config.channels, rows, cols)
    inputs, stages, masks = [], [], []
    for stage, half, mask in _pass_schedule(q, rows, cols):
        if half == 0 and stage > 0:
            previous = previous + prior.stage_embedding(stage - 1, indices[stage - 1])
        inputs.append(prior.pass_inputs(previous, indices[stage], stage, half))
        stages.append(stage)
        masks.append(mask)
    chunk = max(1, PASS_CHUNK_POSITIONS // (rows * cols))
    out = []
    for start in range(0, len(inputs), chunk):
        freqs = prior.frequencies(torch.stack(inputs[start:start + chunk]), stages[start:start + chunk],
                                  masks[start:start + chunk])
        for f, stage, mask in zip(freqs, stages[start:start + chunk], masks[start:start + chunk]):
            out.append((stage, indices[stage][mask].numpy(), f.numpy()))
    return out


def decode_passes(prior: IntegerPrior, num_stages: int, rows: int, cols: int, next_symbols) -> torch.Tensor:
    """Rebuild indices (q, H, W) pass by pass; next_symbols(frequencies (n, K)) -> (n,) ints
    is the range decoder (or a sampler, which turns this into generation)."""
    indices = torch.zeros(num_stages, rows, cols, dtype=torch.long)
    previous = torch.zeros(prior.config.channels, rows, cols)
    for stage, half, mask in _pass_schedule(num_stages, rows, cols):
        if half == 0 and stage > 0:
            previous = previous + prior.stage_embedding(stage - 1, indices[stage - 1])
        x = prior.pass_inputs(previous, indices[stage], stage, half)
        (freqs,) = prior.frequencies(x.unsqueeze(0), [stage], [mask])
        symbols = torch.as_tensor(next_symbols(freqs.numpy()), dtype=torch.long)
        if symbols.shape != (int(mask.sum()),) or int(symbols.min()) < 0 or int(symbols.max()) >= prior.config.codebook_size:
            raise ValueError("decoded symbols do not fit the pass")
        indices[stage][mask] = symbols
    return indices
