"""The float model: the trainable prior (ContextPrior), fake-quantized so that it learns what
IntegerPrior computes, and the rule for continuing a trained prior's training."""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ...config import PriorConfig
from .integer_model import (ACTIVATION_BITS, ACTIVATION_MAX, BIAS_MAX, EMBED_MAX, FAR_DILATION, GATE_MAX,
                            GATE_STEPS, LOGIT_STEPS, MATCH_RADIUS, MATCH_SCALE, MAX_EXPONENT, WEIGHT_MAX,
                            IntegerPrior, check_config, frequency_table, spread)
from .schedule import far_pass, group_map

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
        return sum(spread(table[grid], f) for table, grid, f in zip(tables, coarse, self.config.coarse_factors))

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
        return cumulative[torch.arange(indices.shape[0], device=indices.device), stage]

    def forward(self, indices: torch.Tensor, stage: torch.Tensor, known: torch.Tensor,
                earlier: torch.Tensor | None = None, far: torch.Tensor | None = None) -> torch.Tensor:
        """Logits in bits (B, K, H, W) for stage[b] of each example.

        indices (B, S, H, W) are the true indices (teacher forcing); known (B, H, W) marks
        the positions of stage[b] that the pass may see; earlier = earlier_stages(...);
        far (B,) bool marks far passes (far_pass)."""
        b, s_total, h, w = indices.shape
        rows = torch.arange(b, device=indices.device)
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
        padded_index = F.pad(indices[torch.arange(b, device=indices.device), stage], (r, r, r, r))
        padded_known = F.pad(known.float(), (r, r, r, r))
        if diverged is not None:
            padded_all = F.pad(indices, (r, r, r, r))
            later = (torch.arange(s_total, device=indices.device).view(1, -1) >= stage.view(-1, 1)).view(b, s_total, 1, 1)
        match = torch.zeros(b, self.config.codebook_size, h, w, device=indices.device)
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
        target = indices[torch.arange(b, device=indices.device), stage]  # (B, H, W)
        groups = torch.stack([group_map(self.config, int(s), h, w) for s in stage]).to(indices.device)  # (B, H, W)
        if self.config.schedule == "raster":
            cut = torch.randint(h * w, (b, 1, 1), generator=generator).to(indices.device)
            # stages past raster_stages: one checkerboard half given the other (or given nothing)
            halves = torch.tensor([0 < self.config.raster_stages <= int(s) for s in stage], device=indices.device).view(b, 1, 1)
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
            far = torch.tensor([far_pass(self.config, int(s), g) for s in stage], device=indices.device)
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
