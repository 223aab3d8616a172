"""Context model over residual-VQ index grids: the learned prior that codes (and samples) indices.

Indices are coded stage by stage, and within a stage in groups of positions: each group is
one network pass that sees every group before it (He et al. 2021, "Checkerboard Context
Model for Efficient Learned Image Compression"). The "grouped" schedule (photo models)
codes the first `nested_stages` stages in five nested groups each, coarse to fine: rows and
columns both multiples of 4, then (2, 2) mod 4, then the rest of the even-even lattice, then
odd-odd, then the rest (a checkerboard at two scales, so 15/16 of the positions have
context from their own stage), and every later stage in two checkerboard halves: with
nested_stages n, 5 n + 2 (S - n) passes for the whole grid instead of one per position.
With coarse_groups, stage 0's first group is split again on the x8 lattice (two more
passes, whose copy term looks 4 positions away: "far" passes, with their own weights).
The "raster" schedule (tiny grids such as the digits model) makes every position its own
group (with raster_stages n > 0, only in the first n stages; later stages in two checkerboard
halves). Predicting stage s at a position sees:

    every earlier stage t < s at every position ── sum of per-stage embeddings ─┐
    stage s at positions already known           ── embedding ──────────────────┤
    stage s at positions not yet known           ── one learned "unknown" vector ┤
    which stage this is                          ── learned bias ────────────────┤
    coarser levels' indices (hierarchical models) ── embedding per index and     ┤
                                                     sub-position (coarse_context)│
    the class asked for (generation, num_classes)  ── embedding (none for files) ┤
                                                                                  v
                 clamp to [0, 255]  ─>  [3x3 conv ─> floor, clamp to [0, 255]] x L  ─>
                 1x1 head of stage s ─> logits in 1/16 bit steps ─┐
    match term: + v[s, offset] for every known position of stage s ┴> frequency table ─> CDF
                in the 5x5 window holding index k, on logit k,
                scaled by a gate g / 16 that the head computes per position

The match term is a learned copy model (what makes LZ coders like zstd strong on index grids:
flat regions repeat the same index): it lets a symbol seen nearby become likely at once,
without the trunk having to learn 256 copy rules. The gate lets the network decide where
copying is safe (flat regions: strong) and where it is not (texture: weak). With
conditional_match, a neighbour whose earlier-stage indices differ from the position's (another
partial reconstruction) copies with its own, weaker weights: in a later stage a neighbour
with the same earlier indices holds the same index about 10 times as often as one without.

Every quantity in that path is an integer. The network is trained with fake quantization
(ContextPrior) and shipped as integer tensors (IntegerPrior), which evaluates the same
formulas in float32 arithmetic on integers whose every partial sum stays below 2**24, so
every product and sum is exact and the result cannot depend on summation order, thread
count, batch size or hardware (Balle et al. 2019, "Integer Networks for Data Compression").
"""
from __future__ import annotations

import dataclasses
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
FAR_DILATION = 2  # ... or, in far passes (coarse_groups), at offsets twice as large
MATCH_SCALE = 8.0  # training parameterization of the match weights (bits per unit)
GATE_STEPS = 16  # the match gate g is an integer in [0, GATE_MAX]: the match term is scaled by g / 16
GATE_MAX = 63
BIAS_MAX = 1 << 22  # bound on integer conv and head biases: |sum + bias| < 2**24 stays exact
SCHEDULES = ("grouped", "raster")  # coding orders, see group_map


def check_config(cfg: PriorConfig) -> None:
    """A known schedule, and the largest partial sum of a 3x3 conv below 2**24 (exact float32)."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown prior schedule '{cfg.schedule}'; known: {', '.join(SCHEDULES)}")
    if cfg.nested_stages < 1:
        raise ValueError(f"prior nested_stages must be at least 1, got {cfg.nested_stages}")
    if ACTIVATION_MAX * WEIGHT_MAX * 9 * cfg.channels + BIAS_MAX >= 1 << 24:
        raise ValueError(f"prior channels={cfg.channels} is too wide for exact float32 arithmetic")


def frequency_table() -> torch.Tensor:
    """table[d] = max(1, round(2**15 * 2**(-d/16))) for d = 0..240 (int32)."""
    d = torch.arange(TABLE_SIZE, dtype=torch.float64)
    return torch.clamp(torch.round(2.0 ** FREQ_BITS * torch.exp2(-d / LOGIT_STEPS)), min=1).to(torch.int32)


def group_map(cfg: PriorConfig, stage: int, rows: int, cols: int) -> torch.Tensor:
    """(rows, cols) int64: the pass (group) in which each position of `stage` is coded."""
    r = torch.arange(rows).view(-1, 1)
    c = torch.arange(cols).view(1, -1)
    if cfg.schedule == "raster":
        return (r + c) % 2 if 0 < cfg.raster_stages <= stage else r * cols + c
    if cfg.schedule != "grouped":
        raise ValueError(f"unknown prior schedule '{cfg.schedule}'")
    if stage >= cfg.nested_stages:
        return (r + c) % 2
    groups = torch.full((rows, cols), 4, dtype=torch.long)  # r + c odd: last
    groups[((r % 2 == 1) & (c % 2 == 1)).expand(rows, cols)] = 3
    groups[((r % 2 == 0) & (c % 2 == 0)).expand(rows, cols)] = 2
    groups[((r % 4 == 2) & (c % 4 == 2)).expand(rows, cols)] = 1
    groups[((r % 4 == 0) & (c % 4 == 0)).expand(rows, cols)] = 0
    if cfg.coarse_groups and stage == 0:  # the x4 lattice itself coarse to fine: x8, (4, 4) mod 8, rest
        groups += 2
        groups[((r % 8 == 4) & (c % 8 == 4)).expand(rows, cols)] = 1
        groups[((r % 8 == 0) & (c % 8 == 0)).expand(rows, cols)] = 0
    return groups


def far_pass(cfg: PriorConfig, stage: int, group: int) -> bool:
    """Whether a pass copies from known positions FAR_DILATION times farther away (with its own
    weights): the 2nd and 3rd coarse groups, whose known positions are 4 apart."""
    return cfg.schedule == "grouped" and cfg.coarse_groups and stage == 0 and group in (1, 2)


CONTINUE_RULE = "only nested_stages may change; conditional_match and coarse_groups may be added"


def continues(old: PriorConfig, new: PriorConfig) -> bool:
    """Whether a prior trained with config `old` can be trained on as `new` (ContextPrior.from_integer)."""
    same_weights = dataclasses.replace(old, conditional_match=new.conditional_match, nested_stages=new.nested_stages,
                                       coarse_groups=new.coarse_groups)
    return (same_weights == new and (new.conditional_match or not old.conditional_match)
            and (new.coarse_groups or not old.coarse_groups))


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
        if cfg.conditional_match:  # for neighbours whose earlier stages differ from this position's
            self.diverged_match_weight = nn.Parameter(self.match_weight.detach().clone())
        if cfg.coarse_groups:  # stage 0's far passes
            self.far_match_weight = nn.Parameter(self.match_weight.detach()[0].clone())
        self.gate_weight = nn.Parameter(torch.zeros(s, 1, c))
        self.gate_bias = nn.Parameter(torch.ones(s, 1))  # g = 16: the match term at face value
        self.coarse_embed = nn.ParameterList(nn.Parameter(torch.randn(k, f * f, c) * 0.1)
                                             for f in cfg.coarse_factors)
        if cfg.num_classes:  # no row for "no class": files are coded with nothing added
            self.class_embed = nn.Parameter(torch.randn(cfg.num_classes, c) * 0.1)

    def class_context(self, classes: torch.Tensor) -> torch.Tensor:
        """(B, 1, 1, C): each example's class embedding, zero where classes[b] < 0 (no class)."""
        rows = self._quantize_embedding(self.class_embed)[classes.clamp(min=0)]
        return torch.where((classes >= 0).view(-1, 1), rows, 0.0).view(len(classes), 1, 1, -1)

    def coarse_context(self, coarse: list[torch.Tensor]) -> torch.Tensor:
        """(B, H, W, C): for the coarser stages' grids (B, H/f, W/f), the sum of the embedding of
        each index at each of the f x f positions it covers."""
        tables = [self._quantize_embedding(t) for t in self.coarse_embed]
        return sum(_spread(table[grid], f) for table, grid, f in zip(tables, coarse, self.config.coarse_factors))

    @staticmethod
    def _quantize_embedding(table: torch.Tensor) -> torch.Tensor:
        scale = 2.0 ** ACTIVATION_BITS
        return torch.clamp(_round_ste(table * scale), -EMBED_MAX, EMBED_MAX) / scale

    @staticmethod
    def _quantize_match(weight: torch.Tensor) -> torch.Tensor:
        """Match weights on their grid of 1/16 bit, in bits."""
        return torch.clamp(_round_ste(weight * MATCH_SCALE * LOGIT_STEPS), -WEIGHT_MAX, WEIGHT_MAX) / LOGIT_STEPS

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
                earlier: torch.Tensor | None = None, far: torch.Tensor | None = None) -> torch.Tensor:
        """Logits in bits (B, K, H, W) for stage[b] of each example.

        indices (B, S, H, W) are the true indices (teacher forcing); known (B, H, W) marks
        the positions of stage[b] that the pass may see; earlier = earlier_stages(...);
        far (B,) bool marks far passes (far_pass)."""
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
        v = self._quantize_match(self.match_weight)[stage]
        diverged = self._quantize_match(self.diverged_match_weight)[stage] if self.config.conditional_match else None
        match = self._match_sum(indices, stage, known, v, diverged, 1)
        if far is not None and bool(far.any()):
            v_far = self._quantize_match(self.far_match_weight).expand(b, -1)
            far_match = self._match_sum(indices, stage, known, v_far, None, FAR_DILATION)
            match = torch.where(far.view(b, 1, 1, 1), far_match, match)
        return logits + _floor_ste(match * LOGIT_STEPS * gate / GATE_STEPS) / LOGIT_STEPS

    def _match_sum(self, indices: torch.Tensor, stage: torch.Tensor, known: torch.Tensor, weights: torch.Tensor,
                   diverged: torch.Tensor | None, dilation: int) -> torch.Tensor:
        """(B, K, H, W): over the known positions at offsets (dy, dx) * dilation, dy, dx in
        -2..2, the sum of weights[b, offset] (diverged[b, offset] where the neighbour's
        earlier-stage indices differ from the position's) on the logit of the index there."""
        b, s_total, h, w = indices.shape
        width, r = 2 * MATCH_RADIUS + 1, MATCH_RADIUS * dilation
        padded_index = F.pad(indices[torch.arange(b), stage], (r, r, r, r))
        padded_known = F.pad(known.float(), (r, r, r, r))
        if diverged is not None:
            padded_all = F.pad(indices, (r, r, r, r))
            later = (torch.arange(s_total).view(1, -1) >= stage.view(-1, 1)).view(b, s_total, 1, 1)
        match = torch.zeros(b, self.config.codebook_size, h, w)
        for offset in range(width * width):
            dy, dx = offset // width * dilation, offset % width * dilation
            neighbour = padded_index[:, dy:dy + h, dx:dx + w].unsqueeze(1)
            v_offset = weights[:, offset].view(b, 1, 1)
            if diverged is not None:  # does the neighbour hold this position's earlier indices?
                same_prefix = ((padded_all[:, :, dy:dy + h, dx:dx + w] == indices) | later).all(1)
                v_offset = torch.where(same_prefix, v_offset, diverged[:, offset].view(b, 1, 1))
            weight = (padded_known[:, dy:dy + h, dx:dx + w] * v_offset).unsqueeze(1)
            match = match.scatter_add(1, neighbour, weight)
        return match

    def loss_bits(self, indices: torch.Tensor, stage: torch.Tensor, generator: torch.Generator | None = None,
                  coarse: list[torch.Tensor] | None = None, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Mean code length in bits per index of stage[b] (given classes[b], -1 = no class, if
        the prior is class-conditional).

        "grouped": every pass of the stage, each position scored in the pass that codes it.
        "raster": one random cut per example; every position after the cut is scored given
        the positions before it (a superset of the conditionals raster decoding uses); in a
        stage past raster_stages, one checkerboard half, given the other or given nothing."""
        b, _, h, w = indices.shape
        target = indices[torch.arange(b), stage]  # (B, H, W)
        groups = torch.stack([group_map(self.config, int(s), h, w) for s in stage])  # (B, H, W)
        if self.config.schedule == "raster":
            cut = torch.randint(h * w, (b, 1, 1), generator=generator)
            # stages past raster_stages: one checkerboard half given the other (or given nothing)
            halves = torch.tensor([0 < self.config.raster_stages <= int(s) for s in stage]).view(b, 1, 1)
            cut = torch.where(halves, cut % 2, cut)
            passes = [(groups < cut, torch.where(halves, groups == cut, groups >= cut))]
        else:
            passes = [(groups < g, groups == g) for g in range(int(groups.max()) + 1)]
        total, count = indices.new_zeros((), dtype=torch.float32), 0
        earlier = self.earlier_stages(indices, stage)
        if coarse:
            earlier = earlier + self.coarse_context(coarse)
        if classes is not None and self.config.num_classes:
            earlier = earlier + self.class_context(classes)
        for g, (known, scored) in enumerate(passes):
            far = torch.tensor([far_pass(self.config, int(s), g) for s in stage])
            logits = self(indices, stage, known, earlier, far) * math.log(2)
            nll = F.cross_entropy(logits, target, reduction="none") / math.log(2)
            total = total + (nll * scored).sum()
            count += int(scored.sum())
        return total / max(count, 1)

    @classmethod
    def from_integer(cls, prior: "IntegerPrior", cfg: PriorConfig | None = None) -> "ContextPrior":
        """A trainable prior that computes exactly what `prior` does (to continue training it).

        cfg may differ in nested_stages (the coding order; the weights carry over) and may add
        conditional_match or coarse_groups: their new match weights start as copies of the
        match weights (of stage 0 for the far ones)."""
        cfg = cfg or prior.config
        if not continues(prior.config, cfg):
            raise ValueError(f"a prior can only be continued with its own config ({CONTINUE_RULE})")
        model = cls(cfg)
        t = {name: value.double() for name, value in prior.tensors().items()}
        scale = 2.0 ** ACTIVATION_BITS
        with torch.no_grad():
            for name in ("previous_embed", "current_embed", "stage_bias", "unknown_embed"):
                getattr(model, name).copy_(t[name] / scale)
            model.match_weight.copy_(t["match_weight"] / (MATCH_SCALE * LOGIT_STEPS))
            if cfg.conditional_match:
                model.diverged_match_weight.copy_(t.get("diverged_match_weight", t["match_weight"])
                                                  / (MATCH_SCALE * LOGIT_STEPS))
            if cfg.coarse_groups:
                model.far_match_weight.copy_(t.get("far_match_weight", t["match_weight"][0])
                                             / (MATCH_SCALE * LOGIT_STEPS))
            for i, table in enumerate(model.coarse_embed):
                table.copy_(t[f"coarse_embed{i}"] / scale)
            if cfg.num_classes:
                model.class_embed.copy_(t["class_embed"] / scale)
            layers = [(f"conv{i}", w, b) for i, (w, b) in enumerate(zip(model.conv_weight, model.conv_bias))]
            for name, weight, bias in layers + [("head", model.head_weight, model.head_bias),
                                                 ("gate", model.gate_weight, model.gate_bias)]:
                e = t[f"{name}_exponent"]
                weight.copy_(t[f"{name}_weight"] * 2.0 ** -e.unsqueeze(-1))
                bias.copy_(t[f"{name}_bias"] * 2.0 ** -(e + ACTIVATION_BITS))
        return model

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
            "match_weight": torch.round(self._quantize_match(self.match_weight) * LOGIT_STEPS),
        }
        if self.config.conditional_match:
            out["diverged_match_weight"] = torch.round(self._quantize_match(self.diverged_match_weight) * LOGIT_STEPS)
        if self.config.coarse_groups:
            out["far_match_weight"] = torch.round(self._quantize_match(self.far_match_weight) * LOGIT_STEPS)
        for i, table in enumerate(self.coarse_embed):
            out[f"coarse_embed{i}"] = torch.clamp(torch.round(table * scale), -EMBED_MAX, EMBED_MAX)
        if self.config.num_classes:
            out["class_embed"] = torch.clamp(torch.round(self.class_embed * scale), -EMBED_MAX, EMBED_MAX)
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
        if cfg.conditional_match:
            expected["diverged_match_weight"] = expected["match_weight"]
        if cfg.coarse_groups:
            expected["far_match_weight"] = ((2 * MATCH_RADIUS + 1) ** 2,)
        for i, f in enumerate(cfg.coarse_factors):
            expected[f"coarse_embed{i}"] = (k, f * f, c)
        if cfg.num_classes:
            expected["class_embed"] = (cfg.num_classes, c)
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
        act = x.clamp(0, ACTIVATION_MAX).contiguous(memory_format=torch.channels_last)  # faster convolutions
        for i in range(self.config.layers):
            weight, bias = self.t[f"conv{i}_weight"], self.t[f"conv{i}_bias"]
            shift = _power_of_two(-self.t[f"conv{i}_exponent"]).view(1, -1, 1, 1)
            act = _exact_conv3x3(act, weight, bias).mul_(shift).floor_().clamp_(0, ACTIVATION_MAX)
        return act

    def pass_inputs(self, previous: torch.Tensor, indices_stage: torch.Tensor, stage: int,
                    known: torch.Tensor) -> torch.Tensor:
        """Pre-activation (..., C, H, W) of one pass, for one grid or a batch of them.

        previous: (..., C, H, W) sum of the earlier stages' embeddings; indices_stage: (..., H, W)
        this stage's indices, of which only the `known` (H, W) positions are read."""
        current = self.t["current_embed"][stage][indices_stage * known].movedim(-1, -3)
        unknown = self.t["unknown_embed"][stage].view(-1, 1, 1)
        return previous + self.t["stage_bias"][stage].view(-1, 1, 1) + torch.where(known, current, unknown)

    def coarse_context(self, coarse: list[torch.Tensor]) -> torch.Tensor:
        """(..., C, H, W) integer embedding of the coarser stages' grids (..., H/f, W/f): the
        starting `previous` of this level's passes (exact: sums of integers below 2**24)."""
        total = None
        for i, (grid, f) in enumerate(zip(coarse, self.config.coarse_factors)):
            part = _spread(self.t[f"coarse_embed{i}"][grid.long()], f)
            total = part if total is None else total + part
        return total.movedim(-1, -3)

    def class_context(self, classes: torch.Tensor) -> torch.Tensor:
        """(count, C, 1, 1) integer embedding of each grid's class (count,), zero for class -1."""
        rows = self.t["class_embed"][classes.long().clamp(min=0)]
        return torch.where((classes >= 0).view(-1, 1), rows, 0.0).view(len(classes), -1, 1, 1)

    def stage_embedding(self, stage: int, indices_stage: torch.Tensor) -> torch.Tensor:
        """(..., C, H, W) embedding of one stage's indices (..., H, W), added to `previous` once known."""
        return self.t["previous_embed"][stage][indices_stage].movedim(-1, -3)

    def frequencies(self, inputs: torch.Tensor, stages: list[int], masks: list[torch.Tensor],
                    contexts: list[tuple[torch.Tensor, torch.Tensor, bool]]) -> list[torch.Tensor]:
        """For P passes at once: inputs (P, C, H, W), and per pass its stage, the positions
        (H, W) bool it codes, and (its grid's indices (S', H, W) with S' > stage, of which
        stages up to this one are read, known positions of this stage (H, W), whether it is a
        far pass) for the match term. Returns per pass an (n, K) array of integer frequencies
        in [1, 2**15] (as float32), rows in row-major position order. Identical whether passes
        are evaluated together or not (runs of passes that share stage, mask and known
        positions, such as the grids of one generate call, share their head and match
        computations)."""
        return [self.frequencies_of(d) for d in self.logit_distances(inputs, stages, masks, contexts)]

    def frequencies_of(self, distances: torch.Tensor) -> torch.Tensor:
        """Frequencies table[d] of logit distances d (see logit_distances)."""
        return self.freq_table.index_select(0, distances.view(-1)).view(distances.shape)

    def logit_distances(self, inputs: torch.Tensor, stages: list[int], masks: list[torch.Tensor],
                        contexts: list[tuple[torch.Tensor, torch.Tensor, bool]]) -> list[torch.Tensor]:
        """As frequencies, but each code's distance d = min(max logit - logit, 240) in 1/16 bit
        (int32): its code length is d / 16 bits more than the likeliest code's, up to the
        rounding of the frequency table."""
        with _exact_float32():
            act = self._trunk(inputs)
            out: list[torch.Tensor] = []
            p = 0
            while p < len(stages):
                end = p + 1
                while (end < len(stages) and stages[end] == stages[p] and masks[end] is masks[p]
                       and contexts[end][1] is contexts[p][1]):
                    end += 1
                grids = torch.stack([contexts[i][0][:stages[p] + 1] for i in range(p, end)])
                out.extend(self._head(act[p:end], stages[p], masks[p], grids, contexts[p][1], contexts[p][2]))
                p = end
        return out

    def _head(self, act: torch.Tensor, stage: int, mask: torch.Tensor, grids: torch.Tensor,
              known: torch.Tensor, far: bool) -> list[torch.Tensor]:
        """Logit distances (n, K) for each of G passes: act (G, C, H, W), grids (G, stage + 1, H, W)."""
        count, k = act.shape[0], self.config.codebook_size
        h = act[:, :, mask].transpose(1, 2).reshape(-1, act.shape[1])  # (G * n, C)
        steps = int(math.log2(LOGIT_STEPS)) - ACTIVATION_BITS
        shift = _power_of_two(steps - self.t["head_exponent"][stage])
        logits = torch.addmm(self.t["head_bias"][stage], h, self.t["head_weight"][stage].t()).mul_(shift).floor_()
        g_shift = _power_of_two(int(math.log2(GATE_STEPS)) - ACTIVATION_BITS - self.t["gate_exponent"][stage])
        gate = torch.addmm(self.t["gate_bias"][stage], h, self.t["gate_weight"][stage].t()).mul_(g_shift)
        gate = gate.floor_().clamp_(0, GATE_MAX).view(-1)  # (G * n,)
        cells, match = self._matches(stage, mask, grids, known, far)  # flat (row * K + k) and its sum
        if len(cells):  # only where a neighbour holds the index (repeated cells write equal values)
            flat = logits.view(-1)
            flat[cells] = flat[cells] + torch.floor(match * gate[cells // k] * (1.0 / GATE_STEPS))
        peak = logits.amax(dim=1, keepdim=True)
        distance = logits.neg_().add_(peak).clamp_(max=TABLE_SIZE - 1)
        return list(distance.int().view(count, -1, k))

    def _matches(self, stage: int, mask: torch.Tensor, grids: torch.Tensor, known: torch.Tensor,
                 far: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The match term M of the coded positions (rows g * n + i for position i of grid g),
        sparse: (cells row * K + k, M there), where M[row, k] = sum over the known neighbours
        of the position that hold index k of v[stage, offset], or with conditional_match, of
        the diverged weight where the neighbour's earlier-stage indices differ from the
        position's; in a far pass, of the far weights at offsets FAR_DILATION times larger.
        Cells may repeat (each with the full sum); M is 0 everywhere else."""
        count, k = grids.shape[0], self.config.codebook_size
        v = self.t["far_match_weight"] if far else self.t["match_weight"][stage]
        conditional = self.config.conditional_match and stage > 0 and not far
        v_diverged = self.t["diverged_match_weight"][stage] if conditional else v
        used = torch.arange(len(v))[(v != 0) | (v_diverged != 0)]
        n, which, position, neighbour, here = _neighbour_pairs(mask, known, used, FAR_DILATION if far else 1)
        if not len(which):
            return torch.zeros(0, dtype=torch.long), torch.zeros(0)
        flat_grids = grids.flatten(2)  # (G, stage + 1, H*W)
        row = (torch.arange(count) * n).view(-1, 1) + position.view(1, -1)
        cells = (row * k + flat_grids[:, stage, neighbour]).flatten()
        value = v[used[which]].expand(count, -1)
        if conditional:
            earlier = flat_grids[:, :stage]
            same_prefix = (earlier[:, :, neighbour] == earlier[:, :, here]).all(1)  # (G, pairs)
            value = torch.where(same_prefix, value, v_diverged[used[which]])
        total = torch.zeros(count * n * k).index_put_((cells,), value.flatten(), accumulate=True)
        return cells, total[cells]


def _spread(embedded: torch.Tensor, factor: int) -> torch.Tensor:
    """(..., h, w, f*f, C) per-sub-position embeddings -> (..., h*f, w*f, C)."""
    *lead, h, w, _, c = embedded.shape
    x = embedded.reshape(*lead, h, w, factor, factor, c)
    n = len(lead)
    x = x.permute(*range(n), n, n + 2, n + 1, n + 3, n + 4)
    return x.reshape(*lead, h * factor, w * factor, c)


_PAIRS_CACHE: dict = {}  # the same few (coded, known) masks recur in every stage and image


def _neighbour_pairs(mask: torch.Tensor, known: torch.Tensor, used: torch.Tensor, dilation: int):
    """For the coded positions (row-major) of `mask` and the match offsets `used` (times
    dilation): (n coded positions, and per (offset, position) pair whose neighbour is inside
    the grid and known: the offset number, the position number, the neighbour's and the
    position's flat index)."""
    key = (tuple(mask.shape), mask.numpy().tobytes(), known.numpy().tobytes(), tuple(used.tolist()), dilation)
    pairs = _PAIRS_CACHE.get(key)
    if pairs is None:
        rows, cols = mask.shape
        width = 2 * MATCH_RADIUS + 1
        positions = mask.nonzero()  # (n, 2), row-major
        r = positions[:, 0].view(1, -1) + ((used // width - MATCH_RADIUS) * dilation).view(-1, 1)  # (offsets, n)
        c = positions[:, 1].view(1, -1) + ((used % width - MATCH_RADIUS) * dilation).view(-1, 1)
        inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
        flat = r.clamp(0, rows - 1) * cols + c.clamp(0, cols - 1)
        which, position = (inside & known.flatten()[flat]).nonzero(as_tuple=True)
        here = positions[position, 0] * cols + positions[position, 1]
        pairs = (len(positions), which, position, flat[which, position], here)
        if len(_PAIRS_CACHE) >= 64:
            _PAIRS_CACHE.clear()
        _PAIRS_CACHE[key] = pairs
    return pairs


def _exact_conv3x3(act: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
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
    return _conv3x3_by_shifts(act, kernel).add_(bias.view(1, -1, 1, 1))


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


def pass_schedule(cfg: PriorConfig, num_stages: int, rows: int, cols: int):
    """The coding order: (stage, known (H, W), coded (H, W), far) for every non-empty pass."""
    for stage in range(num_stages):
        groups = group_map(cfg, stage, rows, cols)
        for g in torch.unique(groups).tolist():
            yield stage, groups < g, groups == g, far_pass(cfg, stage, g)


def empty_embedding(count: int | None, channels: int, rows: int, cols: int) -> torch.Tensor:
    """Zeros (count, C, H, W) (or (C, H, W) for None) laid out channels-last in memory, the
    layout the trunk's convolutions are fastest in; the embeddings added to it keep it."""
    shape = (rows, cols, channels) if count is None else (count, rows, cols, channels)
    return torch.zeros(shape).movedim(-1, -3)


PASS_CHUNK_POSITIONS = 1 << 16  # encoder: passes evaluated together, bounded by rows*cols*passes


def encode_passes(prior: IntegerPrior, indices: torch.Tensor, coarse: list[torch.Tensor] | None = None) -> list:
    """Known indices (q, H, W) -> [(stage, symbols (n,), frequencies (n, K))] in coding order.
    coarse: the coarser levels' grids of a hierarchical model (prior.config.coarse_factors)."""
    return list(iter_passes(prior, indices, coarse))


def _starting_embedding(prior: IntegerPrior, count: int | None, rows: int, cols: int,
                        coarse: list[torch.Tensor] | None) -> torch.Tensor:
    previous = empty_embedding(count, prior.config.channels, rows, cols)
    if len(prior.config.coarse_factors) != len(coarse or []):
        raise ValueError(f"the prior conditions on {len(prior.config.coarse_factors)} coarser grids, "
                         f"got {len(coarse or [])}")
    return previous + prior.coarse_context(coarse) if coarse else previous


def iter_passes(prior: IntegerPrior, indices: torch.Tensor, coarse: list[torch.Tensor] | None = None,
                label: int | None = None):
    """encode_passes one pass at a time, so that a caller streaming them to the range coder holds
    only a few passes' inputs and frequency tables at once, whatever the image size.

    Passes are evaluated a few at a time in batched network calls; the integer arithmetic makes
    that identical to the decoder's one pass at a time. label: the grid's class under a
    class-conditional prior (measuring only: files are coded without one)."""
    q, rows, cols = indices.shape
    indices = indices.long()
    chunk = max(1, PASS_CHUNK_POSITIONS // (rows * cols))
    previous = _starting_embedding(prior, None, rows, cols, coarse)
    if label is not None:
        previous = previous + prior.class_context(torch.tensor([label]))[0]
    pending = []  # (inputs, stage, coded mask, context) of passes not yet evaluated

    def evaluate() -> list:
        inputs, stages, masks, contexts = zip(*pending)
        freqs = prior.frequencies(torch.stack(inputs), list(stages), list(masks), list(contexts))
        done = [(stage, indices[stage][mask].numpy(), f.numpy()) for f, stage, mask in zip(freqs, stages, masks)]
        pending.clear()
        return done

    last_stage = 0
    for stage, known, coded, far in pass_schedule(prior.config, q, rows, cols):
        if stage != last_stage:
            previous = previous + prior.stage_embedding(last_stage, indices[last_stage])
            last_stage = stage
        pending.append((prior.pass_inputs(previous, indices[stage], stage, known), stage, coded, (indices, known, far)))
        if len(pending) == chunk:
            yield from evaluate()
    if pending:
        yield from evaluate()


def decode_passes(prior: IntegerPrior, num_stages: int, rows: int, cols: int, next_symbols,
                  count: int = 1, coarse: list[torch.Tensor] | None = None,
                  classes: torch.Tensor | None = None) -> torch.Tensor:
    """Rebuild `count` grids (count, q, H, W) pass by pass. next_symbols(frequencies (n, K))
    -> (n,) ints is the range decoder, or a sampler, which turns this into generation
    (the count grids of a pass are then evaluated in one network call, rows grid-major).
    coarse: the coarser levels' grids (count, H/f, W/f) of a hierarchical model.
    classes: (count,) the class of each grid for a class-conditional prior (generation; -1 or
    None: no class, which is how files are coded)."""
    indices = torch.zeros(count, num_stages, rows, cols, dtype=torch.long)
    previous = _starting_embedding(prior, count, rows, cols, coarse)
    if classes is not None:
        if not prior.config.num_classes:
            raise ValueError("the prior is not class-conditional")
        classes = torch.as_tensor(classes, dtype=torch.long).view(count)
        if int(classes.max()) >= prior.config.num_classes:
            raise ValueError(f"class must be below {prior.config.num_classes}")
        previous = previous + prior.class_context(classes)
    last_stage = 0
    for stage, known, coded, far in pass_schedule(prior.config, num_stages, rows, cols):
        if stage != last_stage:
            previous = previous + prior.stage_embedding(last_stage, indices[:, last_stage])
            last_stage = stage
        x = prior.pass_inputs(previous, indices[:, stage], stage, known)
        contexts = [(indices[i], known, far) for i in range(count)]
        parts = prior.frequencies(x, [stage] * count, [coded] * count, contexts)
        freqs = parts[0] if count == 1 else torch.cat(parts)
        symbols = torch.as_tensor(np.asarray(next_symbols(freqs.numpy())), dtype=torch.long)
        n = int(coded.sum())
        if symbols.shape != (count * n,) or int(symbols.min()) < 0 or int(symbols.max()) >= prior.config.codebook_size:
            raise ValueError("decoded symbols do not fit the pass")
        indices[:, stage][:, coded] = symbols.view(count, n)
    return indices


class GuidedSampler:
    """Classifier-free guidance (Ho and Salimans 2022) for a class-conditional prior, sampling only.

    decode_passes runs `count` grids with their classes followed by the same `count` grids
    without a class (2 * count grids in all, rows grid-major); each pass draws one symbol per
    position with `sampler` from log p = log f_class + weight * (log f_class - log f_none), and
    gives it to both copies, so the unconditional copy always sees the conditional grid.
    weight 0 is plain conditional sampling."""

    def __init__(self, sampler: "Sampler", weight: float):
        if not weight >= 0 or math.isinf(weight):
            raise ValueError(f"guidance must be a finite number >= 0, got {weight}")
        self.sampler, self.weight = sampler, weight

    def __call__(self, frequencies: np.ndarray) -> np.ndarray:
        half = len(frequencies) // 2
        given, blind = np.log(frequencies[:half].astype(np.float64)), np.log(frequencies[half:].astype(np.float64))
        guided = given + self.weight * (given - blind)
        symbols = self.sampler(np.exp(guided - guided.max(axis=1, keepdims=True)))
        return np.concatenate([symbols, symbols])


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
