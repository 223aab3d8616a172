"""Context model over residual-VQ index grids: the learned prior that codes (and samples) indices.

Indices are coded stage by stage, and within a stage in groups of positions: each group is
one network pass that sees every group before it (He et al. 2021, "Checkerboard Context
Model for Efficient Learned Image Compression"). The "grouped" schedule (photo models)
codes stage 0 in five nested groups, coarse to fine: rows and columns both multiples of 4,
then (2, 2) mod 4, then the rest of the even-even lattice, then odd-odd, then the rest
(a checkerboard at two scales, so even the first stage has context for 15/16 of its
positions), and every later stage in two checkerboard halves: 5 + 2 (S - 1) passes for
the whole grid instead of one per position. The "raster" schedule (tiny grids such as
the digits model) makes every position its own group. Predicting stage s at a position sees:

    every earlier stage t < s at every position ── sum of per-stage embeddings ─┐
    stage s at positions already known           ── embedding ──────────────────┤
    stage s at positions not yet known           ── one learned "unknown" vector ┤
    which stage this is                          ── learned bias ────────────────┤
                                                                                  v
                 clamp to [0, 255]  ─>  [3x3 conv ─> floor, clamp to [0, 255]] x L  ─>
                 1x1 head of stage s ─> logits in 1/16 bit steps ─┐
    match term: + v[s, offset] for every known position of stage s ┴> frequency table ─> CDF
                in the 5x5 window holding index k, on logit k,
                scaled by a gate g / 16 that the head computes per position

The match term is a learned copy model (what makes LZ coders like zstd strong on index grids:
flat regions repeat the same index): it lets a symbol seen nearby become likely at once,
without the trunk having to learn 256 copy rules. The gate lets the network decide where
copying is safe (flat regions: strong) and where it is not (texture: weak).

Every quantity in that path is an integer. The network is trained with fake quantization
(ContextPrior) and shipped as integer tensors (IntegerPrior), which evaluates the same
formulas in float32 arithmetic on integers whose every partial sum stays below 2**24, so
every product and sum is exact and the result cannot depend on summation order, thread
count, batch size or hardware (Balle et al. 2019, "Integer Networks for Data Compression").
"""
from __future__ import annotations

import math

import numpy as np
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
MATCH_RADIUS = 2  # the match term looks at known positions up to 2 away (a 5x5 window)
MATCH_SCALE = 8.0  # training parameterization of the match weights (bits per unit)
GATE_STEPS = 16  # the match gate g is an integer in [0, GATE_MAX]: the match term is scaled by g / 16
GATE_MAX = 63
BIAS_MAX = 1 << 22  # bound on integer conv and head biases: |sum + bias| < 2**24 stays exact
SCHEDULES = ("grouped", "raster")  # coding orders, see group_map


def check_config(cfg: PriorConfig) -> None:
    """A known schedule, and the largest partial sum of a 3x3 conv below 2**24 (exact float32)."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown prior schedule '{cfg.schedule}'; known: {', '.join(SCHEDULES)}")
    if ACTIVATION_MAX * WEIGHT_MAX * 9 * cfg.channels + BIAS_MAX >= 1 << 24:
        raise ValueError(f"prior channels={cfg.channels} is too wide for exact float32 arithmetic")


def frequency_table() -> torch.Tensor:
    """table[d] = max(1, round(2**15 * 2**(-d/16))) for d = 0..240 (int32)."""
    d = torch.arange(TABLE_SIZE, dtype=torch.float64)
    return torch.clamp(torch.round(2.0 ** FREQ_BITS * torch.exp2(-d / LOGIT_STEPS)), min=1).to(torch.int32)


def group_map(schedule: str, stage: int, rows: int, cols: int) -> torch.Tensor:
    """(rows, cols) int64: the pass (group) in which each position of `stage` is coded."""
    r = torch.arange(rows).view(-1, 1)
    c = torch.arange(cols).view(1, -1)
    if schedule == "raster":
        return r * cols + c
    if schedule != "grouped":
        raise ValueError(f"unknown prior schedule '{schedule}'")
    if stage > 0:
        return (r + c) % 2
    groups = torch.full((rows, cols), 4, dtype=torch.long)  # r + c odd: last
    groups[((r % 2 == 1) & (c % 2 == 1)).expand(rows, cols)] = 3
    groups[((r % 2 == 0) & (c % 2 == 0)).expand(rows, cols)] = 2
    groups[((r % 4 == 2) & (c % 4 == 2)).expand(rows, cols)] = 1
    groups[((r % 4 == 0) & (c % 4 == 0)).expand(rows, cols)] = 0
    return groups


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
        check_config(cfg)
        self.config = cfg
        s, k, c = cfg.num_stages, cfg.codebook_size, cfg.channels
        self.previous_embed = nn.Parameter(torch.randn(s, k, c) * 0.3)
        self.current_embed = nn.Parameter(torch.randn(s, k, c) * 0.3)
        self.stage_bias = nn.Parameter(torch.full((s, c), 0.5))
        self.unknown_embed = nn.Parameter(torch.randn(s, c) * 0.3)
        self.conv_weight = nn.ParameterList(
            nn.Parameter(torch.randn(c, 9 * c) / math.sqrt(9 * c)) for _ in range(cfg.layers))
        self.conv_bias = nn.ParameterList(nn.Parameter(torch.zeros(c)) for _ in range(cfg.layers))
        self.head_weight = nn.Parameter(torch.randn(s, k, c) / math.sqrt(c))
        self.head_bias = nn.Parameter(torch.zeros(s, k))
        # in units of MATCH_SCALE bits, so that Adam's steps (about lr each) move it quickly
        self.match_weight = nn.Parameter(torch.full((s, (2 * MATCH_RADIUS + 1) ** 2), 1.5 / MATCH_SCALE))
        self.gate_weight = nn.Parameter(torch.zeros(s, 1, c))
        self.gate_bias = nn.Parameter(torch.ones(s, 1))  # g = 16: the match term at face value

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

    def earlier_stages(self, indices: torch.Tensor, stage: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C): the sum of the embeddings of stages < stage[b] (shared by a stage's passes)."""
        previous = self._quantize_embedding(self.previous_embed)  # (S, K, C)
        per_stage = torch.stack([previous[t][indices[:, t]] for t in range(indices.shape[1])], dim=1)
        cumulative = torch.cat([torch.zeros_like(per_stage[:, :1]), per_stage.cumsum(1)], dim=1)
        return cumulative[torch.arange(indices.shape[0]), stage]

    def forward(self, indices: torch.Tensor, stage: torch.Tensor, known: torch.Tensor,
                earlier: torch.Tensor | None = None) -> torch.Tensor:
        """Logits in bits (B, K, H, W) for stage[b] of each example.

        indices (B, S, H, W) are the true indices (teacher forcing); known (B, H, W) marks
        the positions of stage[b] that the pass may see; earlier = earlier_stages(...)."""
        b, s_total, h, w = indices.shape
        rows = torch.arange(b)
        a_max = ACTIVATION_MAX / 2.0 ** ACTIVATION_BITS
        x = self.earlier_stages(indices, stage) if earlier is None else earlier
        current = self._quantize_embedding(self.current_embed)[stage.view(-1, 1, 1), indices[rows, stage]]
        unknown = self._quantize_embedding(self.unknown_embed)[stage].view(b, 1, 1, -1)
        x = x + torch.where(known.unsqueeze(-1), current, unknown)
        x = x + self._quantize_embedding(self.stage_bias)[stage].view(b, 1, 1, -1)
        act = torch.clamp(x, 0, a_max).permute(0, 3, 1, 2)  # (B, C, H, W)
        for weight, bias in zip(self.conv_weight, self.conv_bias):
            w_q, b_q = self._quantize_weight(weight, bias, ACTIVATION_BITS)
            y = F.conv2d(act, w_q.view(w_q.shape[0], -1, 3, 3), b_q, padding=1)
            act = torch.clamp(_floor_ste(y * 2.0 ** ACTIVATION_BITS), 0, ACTIVATION_MAX)
            act = act / 2.0 ** ACTIVATION_BITS
        w_q, b_q = self._quantize_weight(self.head_weight, self.head_bias, ACTIVATION_BITS)
        logits = torch.einsum("bkc,bchw->bkhw", w_q[stage], act) + b_q[stage].view(b, -1, 1, 1)
        logits = _floor_ste(logits * LOGIT_STEPS) / LOGIT_STEPS
        g_w, g_b = self._quantize_weight(self.gate_weight, self.gate_bias, ACTIVATION_BITS)
        gate = torch.einsum("bkc,bchw->bkhw", g_w[stage], act) + g_b[stage].view(b, -1, 1, 1)
        gate = torch.clamp(_floor_ste(gate * GATE_STEPS), 0, GATE_MAX)  # (B, 1, H, W) integers
        # match term: for each offset, add v[stage, offset] on the logit of the index found there
        width = 2 * MATCH_RADIUS + 1
        v = torch.clamp(_round_ste(self.match_weight * MATCH_SCALE * LOGIT_STEPS), -WEIGHT_MAX, WEIGHT_MAX) / LOGIT_STEPS
        current, r = indices[rows, stage], MATCH_RADIUS
        padded_index = F.pad(current, (r, r, r, r))
        padded_known = F.pad(known.float(), (r, r, r, r))
        for offset in range(width * width):
            dy, dx = offset // width, offset % width
            neighbour = padded_index[:, dy:dy + h, dx:dx + w].unsqueeze(1)
            weight = (padded_known[:, dy:dy + h, dx:dx + w] * v[stage, offset].view(b, 1, 1)).unsqueeze(1)
            match = (match if offset else torch.zeros_like(logits)).scatter_add(1, neighbour, weight)
        return logits + _floor_ste(match * LOGIT_STEPS * gate / GATE_STEPS) / LOGIT_STEPS

    def loss_bits(self, indices: torch.Tensor, stage: torch.Tensor, generator: torch.Generator | None = None
                  ) -> torch.Tensor:
        """Mean code length in bits per index of stage[b].

        "grouped": every pass of the stage, each position scored in the pass that codes it.
        "raster": one random cut per example; every position after the cut is scored given
        the positions before it (a superset of the conditionals raster decoding uses)."""
        b, _, h, w = indices.shape
        target = indices[torch.arange(b), stage]  # (B, H, W)
        groups = torch.stack([group_map(self.config.schedule, int(s), h, w) for s in stage])  # (B, H, W)
        if self.config.schedule == "raster":
            cut = torch.randint(h * w, (b, 1, 1), generator=generator)
            passes = [(groups < cut, groups >= cut)]
        else:
            passes = [(groups < g, groups == g) for g in range(int(groups.max()) + 1)]
        total, count = indices.new_zeros((), dtype=torch.float32), 0
        earlier = self.earlier_stages(indices, stage)
        for known, scored in passes:
            logits = self(indices, stage, known, earlier) * math.log(2)
            nll = F.cross_entropy(logits, target, reduction="none") / math.log(2)
            total = total + (nll * scored).sum()
            count += int(scored.sum())
        return total / max(count, 1)

    @torch.no_grad()
    def to_integer(self) -> dict[str, torch.Tensor]:
        """The integer tensors IntegerPrior runs on (what ships in the weights file)."""
        scale = 2.0 ** ACTIVATION_BITS
        out = {
            "previous_embed": torch.clamp(torch.round(self.previous_embed * scale), -EMBED_MAX, EMBED_MAX),
            "current_embed": torch.clamp(torch.round(self.current_embed * scale), -EMBED_MAX, EMBED_MAX),
            "stage_bias": torch.clamp(torch.round(self.stage_bias * scale), -EMBED_MAX, EMBED_MAX),
            "unknown_embed": torch.clamp(torch.round(self.unknown_embed * scale), -EMBED_MAX, EMBED_MAX),
            "freq_table": frequency_table(),
            "match_weight": torch.clamp(torch.round(self.match_weight * MATCH_SCALE * LOGIT_STEPS),
                                        -WEIGHT_MAX, WEIGHT_MAX),
        }
        layers = [(f"conv{i}", w, b) for i, (w, b) in enumerate(zip(self.conv_weight, self.conv_bias))]
        heads = [("head", self.head_weight, self.head_bias), ("gate", self.gate_weight, self.gate_bias)]
        for name, weight, bias in layers + heads:
            e = _exponents(weight)
            out[f"{name}_weight"] = torch.clamp(torch.round(weight * 2.0 ** e.unsqueeze(-1)), -WEIGHT_MAX, WEIGHT_MAX)
            out[f"{name}_bias"] = torch.clamp(torch.round(bias * 2.0 ** (e + ACTIVATION_BITS)), -BIAS_MAX, BIAS_MAX)
            out[f"{name}_exponent"] = e
        return {k: v.to(torch.int32) for k, v in out.items()}


class IntegerPrior:
    """Integer-exact evaluation of a trained prior: integer CDF frequencies per pass.

    All tensors hold integers (float32 for fast exact matmuls); see the module docstring."""

    def __init__(self, cfg: PriorConfig, tensors: dict[str, torch.Tensor]):
        check_config(cfg)
        self.config = cfg
        s, k, c = cfg.num_stages, cfg.codebook_size, cfg.channels
        expected = {"previous_embed": (s, k, c), "current_embed": (s, k, c), "stage_bias": (s, c), "unknown_embed": (s, c),
                    "freq_table": (TABLE_SIZE,), "head_weight": (s, k, c), "head_bias": (s, k),
                    "head_exponent": (s, k), "match_weight": (s, (2 * MATCH_RADIUS + 1) ** 2),
                    "gate_weight": (s, 1, c), "gate_bias": (s, 1), "gate_exponent": (s, 1)}
        for i in range(cfg.layers):
            expected.update({f"conv{i}_weight": (c, 9 * c), f"conv{i}_bias": (c,), f"conv{i}_exponent": (c,)})
        for name, shape in expected.items():
            if name not in tensors or tuple(tensors[name].shape) != shape:
                raise ValueError(f"prior tensor {name}: expected shape {shape}")
        limits = {"weight": WEIGHT_MAX, "exponent": MAX_EXPONENT, "embed": EMBED_MAX, "stage_bias": EMBED_MAX,
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

    def pass_inputs(self, previous: torch.Tensor, indices_stage: torch.Tensor, stage: int,
                    known: torch.Tensor) -> torch.Tensor:
        """Pre-activation (..., C, H, W) of one pass, for one grid or a batch of them.

        previous: (..., C, H, W) sum of the earlier stages' embeddings; indices_stage: (..., H, W)
        this stage's indices, of which only the `known` (H, W) positions are read."""
        current = self.t["current_embed"][stage][indices_stage * known].movedim(-1, -3)
        unknown = self.t["unknown_embed"][stage].view(-1, 1, 1)
        return previous + self.t["stage_bias"][stage].view(-1, 1, 1) + torch.where(known, current, unknown)

    def stage_embedding(self, stage: int, indices_stage: torch.Tensor) -> torch.Tensor:
        """(..., C, H, W) embedding of one stage's indices (..., H, W), added to `previous` once known."""
        return self.t["previous_embed"][stage][indices_stage].movedim(-1, -3)

    def frequencies(self, inputs: torch.Tensor, stages: list[int], masks: list[torch.Tensor],
                    contexts: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """For P passes at once: inputs (P, C, H, W), and per pass its stage, the positions
        (H, W) bool it codes, and (indices of its stage (H, W), known positions (H, W)) for the
        match term. Returns per pass an (n, K) array of integer frequencies in [1, 2**15]
        (as float32), rows in row-major position order. Identical whether passes are
        evaluated together or not (runs of passes that share stage, mask and known positions,
        such as the grids of one generate call, share their head and match computations)."""
        with _exact_float32():
            act = self._trunk(inputs)
            out: list[torch.Tensor] = []
            p = 0
            while p < len(stages):
                end = p + 1
                while (end < len(stages) and stages[end] == stages[p] and masks[end] is masks[p]
                       and contexts[end][1] is contexts[p][1]):
                    end += 1
                indices = torch.stack([contexts[i][0] for i in range(p, end)])
                out.extend(self._head(act[p:end], stages[p], masks[p], indices, contexts[p][1]))
                p = end
        return out

    def _head(self, act: torch.Tensor, stage: int, mask: torch.Tensor, indices: torch.Tensor,
              known: torch.Tensor) -> list[torch.Tensor]:
        """Frequencies (n, K) for each of G passes: act (G, C, H, W), indices (G, H, W)."""
        h = act[:, :, mask].transpose(1, 2)  # (G, n, C)
        steps = int(math.log2(LOGIT_STEPS)) - ACTIVATION_BITS
        shift = _power_of_two(steps - self.t["head_exponent"][stage])
        logits = torch.floor((torch.matmul(h, self.t["head_weight"][stage].t()) + self.t["head_bias"][stage]) * shift)
        g_shift = _power_of_two(int(math.log2(GATE_STEPS)) - ACTIVATION_BITS - self.t["gate_exponent"][stage])
        gate = torch.floor((torch.matmul(h, self.t["gate_weight"][stage].t()) + self.t["gate_bias"][stage])
                           * g_shift).clamp_(0, GATE_MAX)  # (G, n, 1)
        match = self._matches(stage, mask, indices, known)  # (G, n, K)
        logits += torch.floor(match * gate * (1.0 / GATE_STEPS))
        distance = (logits.amax(dim=2, keepdim=True) - logits).clamp_(max=TABLE_SIZE - 1)
        return list(torch.take(self.freq_table, distance.long()))

    def _matches(self, stage: int, mask: torch.Tensor, indices: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """match[g, i, k] = sum of v[stage, offset] over the known neighbours of coded position
        i (of grid g) that hold index k."""
        rows, cols = mask.shape
        count = indices.shape[0]
        positions = mask.nonzero()  # (n, 2), row-major
        n, k = len(positions), self.config.codebook_size
        match = torch.zeros(count * n, k)
        width = 2 * MATCH_RADIUS + 1
        offsets = torch.arange(width * width)
        v = self.t["match_weight"][stage]
        used = offsets[v != 0]
        r = positions[:, 0].view(1, -1) + (used // width - MATCH_RADIUS).view(-1, 1)  # (offsets, n)
        c = positions[:, 1].view(1, -1) + (used % width - MATCH_RADIUS).view(-1, 1)
        inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
        flat = (r.clamp(0, rows - 1) * cols + c.clamp(0, cols - 1))
        hit = inside & known.flatten()[flat]
        which, position = hit.nonzero(as_tuple=True)  # (offset number, coded position) pairs
        if len(which):
            cell = flat[which, position]
            row = ((torch.arange(count) * n).view(-1, 1) + position.view(1, -1)).flatten()
            symbol = indices.flatten(1)[:, cell].flatten()
            value = v[used[which]].repeat(count)
            match.index_put_((row, symbol), value, accumulate=True)
        return match.view(count, n, k)


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


def pass_schedule(schedule: str, num_stages: int, rows: int, cols: int):
    """The coding order: (stage, known (H, W), coded (H, W)) for every non-empty pass."""
    for stage in range(num_stages):
        groups = group_map(schedule, stage, rows, cols)
        for g in torch.unique(groups).tolist():
            yield stage, groups < g, groups == g


PASS_CHUNK_POSITIONS = 1 << 16  # encoder: passes evaluated together, bounded by rows*cols*passes


def encode_passes(prior: IntegerPrior, indices: torch.Tensor):
    """Known indices (q, H, W) -> [(stage, symbols (n,), frequencies (n, K))] in coding order.

    All passes are evaluated in a few batched network calls; the integer arithmetic makes
    that identical to the decoder's one pass at a time."""
    q, rows, cols = indices.shape
    indices = indices.long()
    previous = torch.zeros(prior.config.channels, rows, cols)
    inputs, stages, masks, contexts = [], [], [], []
    last_stage = 0
    for stage, known, coded in pass_schedule(prior.config.schedule, q, rows, cols):
        if stage != last_stage:
            previous = previous + prior.stage_embedding(last_stage, indices[last_stage])
            last_stage = stage
        inputs.append(prior.pass_inputs(previous, indices[stage], stage, known))
        stages.append(stage)
        masks.append(coded)
        contexts.append((indices[stage], known))
    chunk = max(1, PASS_CHUNK_POSITIONS // (rows * cols))
    out = []
    for start in range(0, len(inputs), chunk):
        part = slice(start, start + chunk)
        freqs = prior.frequencies(torch.stack(inputs[part]), stages[part], masks[part], contexts[part])
        for f, stage, mask in zip(freqs, stages[part], masks[part]):
            out.append((stage, indices[stage][mask].numpy(), f.numpy()))
    return out


def decode_passes(prior: IntegerPrior, num_stages: int, rows: int, cols: int, next_symbols,
                  count: int = 1) -> torch.Tensor:
    """Rebuild `count` grids (count, q, H, W) pass by pass. next_symbols(frequencies (n, K))
    -> (n,) ints is the range decoder, or a sampler, which turns this into generation
    (the count grids of a pass are then evaluated in one network call, rows grid-major)."""
    indices = torch.zeros(count, num_stages, rows, cols, dtype=torch.long)
    previous = torch.zeros(count, prior.config.channels, rows, cols)
    last_stage = 0
    for stage, known, coded in pass_schedule(prior.config.schedule, num_stages, rows, cols):
        if stage != last_stage:
            previous = previous + prior.stage_embedding(last_stage, indices[:, last_stage])
            last_stage = stage
        x = prior.pass_inputs(previous, indices[:, stage], stage, known)
        contexts = [(indices[i, stage], known) for i in range(count)]
        freqs = torch.cat(prior.frequencies(x, [stage] * count, [coded] * count, contexts))
        symbols = torch.as_tensor(np.asarray(next_symbols(freqs.numpy())), dtype=torch.long)
        n = int(coded.sum())
        if symbols.shape != (count * n,) or int(symbols.min()) < 0 or int(symbols.max()) >= prior.config.codebook_size:
            raise ValueError("decoded symbols do not fit the pass")
        indices[:, stage][:, coded] = symbols.view(count, n)
    return indices


class Sampler:
    """Draws indices from the prior's frequencies: the decode_passes callback for generation.

    p(k) is proportional to f_k ** (1 / temperature), restricted to the top_k most likely
    symbols (None = all); temperature 0 takes the most likely symbol (the lowest index
    among equals, so top_k=1 gives the same choice)."""

    def __init__(self, temperature: float = 1.0, top_k: int | None = None, seed: int = 0):
        if not temperature >= 0 or math.isinf(temperature):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.temperature, self.top_k = temperature, top_k
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, frequencies: np.ndarray) -> np.ndarray:
        freqs = torch.from_numpy(frequencies).double()
        if self.temperature == 0:
            return freqs.argmax(dim=1).numpy()
        log_p = torch.log(freqs) / self.temperature
        if self.top_k is not None and self.top_k < freqs.shape[1]:
            # a stable sort breaks ties towards the lower index, as argmax does
            order = torch.sort(log_p, dim=1, descending=True, stable=True).indices
            dropped = torch.ones_like(log_p, dtype=torch.bool).scatter_(1, order[:, :self.top_k], False)
            log_p = log_p.masked_fill(dropped, -math.inf)
        probabilities = torch.softmax(log_p, dim=1)
        return torch.multinomial(probabilities, 1, generator=self.generator)[:, 0].numpy()
