"""The integer model: the prior as shipped, integer tensors evaluated exactly (IntegerPrior),
and the integer grid that the float model trains on."""
from __future__ import annotations

import math

import torch

from ...config import PriorConfig
from .exact import (Int8Affine, activation_int8, blank_padded, exact_conv3x3, exact_float32, int8_matmul_available,
                    padded_int8, power_of_two, windows3x3)
from .schedule import SCHEDULES

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
TRUNK_POSITIONS = 1 << 16  # int8 path: grid positions whose 3x3 windows (9 C bytes each) exist at once
PAIR_CACHE_BYTES = 1 << 28  # the neighbour pairs kept for masks that recur (huge grids' would not fit)
SPARSE_TRUNK_FRACTION = 0.6  # a convolution runs at just the positions read where they are at most this part
# (0.6 takes the passes that read 54-56 % of a grid: 1-5 % faster at levels 10-13 than 0.5; 0.9 is slower)
BIAS_MAX = 1 << 22  # bound on integer conv and head biases: |sum + bias| < 2**24 stays exact


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


class IntegerPrior:
    """Integer-exact evaluation of a trained prior: integer CDF frequencies per pass.

    All tensors hold integers (float32 for fast exact matmuls); see the package docstring.
    Where torch has an int8 matrix product (exact.int8_matmul_available, or int8=True), the
    convolutions and the head run on int8 activations instead (exact.Int8Affine: int8 products
    summed in int32, or float32 products where the CPU lacks int8 dot products), and the last
    convolution only at the positions a pass codes: the same integers, about twice as fast."""

    def __init__(self, cfg: PriorConfig, tensors: dict[str, torch.Tensor], int8: bool | None = None):
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
        self.int8 = int8_matmul_available() if int8 is None else int8
        if self.int8:
            self._convs = [Int8Affine(self.t[f"conv{i}_weight"].view(c, c, 3, 3).permute(0, 2, 3, 1).reshape(c, -1),
                                      self.t[f"conv{i}_bias"], self.t[f"conv{i}_exponent"], centered_output=True)
                           for i in range(cfg.layers)]
            logit_shift, gate_shift = self._head_shifts()
            self._heads = [Int8Affine(self.t["head_weight"][i], self.t["head_bias"][i], logit_shift[i]) for i in range(s)]
            self._gates = [Int8Affine(self.t["gate_weight"][i], self.t["gate_bias"][i], gate_shift[i]) for i in range(s)]
        bias = self.t["stage_bias"]  # a pass's input at a position: bias + its index's row, or the unknown row
        self._pass_rows = torch.cat([self.t["current_embed"] + bias.unsqueeze(1),
                                     (self.t["unknown_embed"] + bias).unsqueeze(1)], dim=1)  # (S, K + 1, C)
        self._pairs: dict = {}  # the same few (coded, known) masks recur in every stage and image
        self._pairs_bytes: dict = {}  # ... and their size: the cache holds at most PAIR_CACHE_BYTES

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: t.to(torch.int32) for name, t in self.t.items()}

    def _head_shifts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Right shifts (S, K) of the logits and (S, 1) of the gate: activations count 1/2**5,
        logits 1/16 bit and the gate 1/16, so each sum is divided by 2**(5 - 4 + exponent)."""
        return (ACTIVATION_BITS - int(math.log2(LOGIT_STEPS)) + self.t["head_exponent"],
                ACTIVATION_BITS - int(math.log2(GATE_STEPS)) + self.t["gate_exponent"])

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Float path: x (P, C, H, W) integer pre-activations -> (P, C, H, W) integer activations."""
        act = x.clamp(0, ACTIVATION_MAX).contiguous(memory_format=torch.channels_last)  # faster convolutions
        for i in range(self.config.layers):
            weight, bias = self.t[f"conv{i}_weight"], self.t[f"conv{i}_bias"]
            shift = power_of_two(-self.t[f"conv{i}_exponent"]).view(1, -1, 1, 1)
            act = exact_conv3x3(act, weight, bias).mul_(shift).floor_().clamp_(0, ACTIVATION_MAX)
        return act

    def _trunk_but_last(self, x: torch.Tensor, coded: torch.Tensor | None = None) -> torch.Tensor:
        """int8 path: x (P, C, H, W) integer pre-activations -> the last convolution's input,
        centered int8, padded (P, H + 2, W + 2, C) (with no convolutions: the activations).
        coded: (H, W) bool, the positions the head will read (None: all). Each convolution
        then runs only where a later one reads it, within as many positions of a coded one
        as there are convolutions after it; elsewhere its output is left at 0 (never read)."""
        p, c, h, w = x.shape
        padded = padded_int8(x.permute(0, 2, 3, 1))
        rows = max(1, TRUNK_POSITIONS // w)  # the windows of this many rows at once
        hidden_convs = self._convs[:-1]
        for depth, conv in enumerate(hidden_convs):
            source, padded = padded, blank_padded(p, h, w, c)  # each output written centered, in place
            read = None if coded is None else dilated(coded, len(hidden_convs) - depth)
            if read is not None and int(read.sum()) <= SPARSE_TRUNK_FRACTION * h * w:
                positions = read.nonzero()
                for start in range(0, len(positions), TRUNK_POSITIONS):
                    part = positions[start:start + TRUNK_POSITIONS]
                    padded[:, 1 + part[:, 0], 1 + part[:, 1]] = activation_int8(conv(windows3x3(source, part))).view(
                        p, len(part), c)
                continue
            for top in range(0, h, rows):
                end = min(h, top + rows)
                padded[:, 1 + top:1 + end, 1:-1] = activation_int8(conv(windows3x3(source[:, top:end + 2]))).view(
                    p, end - top, w, c)
        return padded

    def _head_rows(self, hidden: torch.Tensor, stage: int, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer logits (G * n, K) and match gates (G * n,) at the coded positions of G passes
        (rows g * n + i for position i, row-major, of pass g); hidden: _trunk's output (float
        path) or _trunk_but_last's (int8 path)."""
        if self.int8:
            positions = mask.nonzero()
            if self._convs:
                h = activation_int8(self._convs[-1](windows3x3(hidden, positions)))
            else:
                h = hidden[:, 1 + positions[:, 0], 1 + positions[:, 1]].reshape(-1, hidden.shape[-1])
            return self._heads[stage](h), self._gates[stage](h).clamp_(0, GATE_MAX).view(-1)
        logit_shift, gate_shift = self._head_shifts()
        h = hidden[:, :, mask].transpose(1, 2).reshape(-1, hidden.shape[1])  # (G * n, C)
        logits = torch.addmm(self.t["head_bias"][stage], h, self.t["head_weight"][stage].t())
        logits = logits.mul_(power_of_two(-logit_shift[stage])).floor_()
        gate = torch.addmm(self.t["gate_bias"][stage], h, self.t["gate_weight"][stage].t())
        gate = gate.mul_(power_of_two(-gate_shift[stage])).floor_().clamp_(0, GATE_MAX).view(-1)
        return logits.int(), gate.int()

    def pass_inputs(self, previous: torch.Tensor, indices_stage: torch.Tensor, stage: int,
                    known: torch.Tensor) -> torch.Tensor:
        """Pre-activation (..., C, H, W) of one pass, for one grid or a batch of them.

        previous: (..., C, H, W) sum of the earlier stages' embeddings; indices_stage: (..., H, W)
        this stage's indices, of which only the `known` (H, W) positions are read."""
        rows = torch.where(known, indices_stage, self.config.codebook_size)  # row K: unknown
        return previous + lookup(self._pass_rows[stage], rows).movedim(-1, -3)

    def coarse_context(self, coarse: list[torch.Tensor]) -> torch.Tensor:
        """(..., C, H, W) integer embedding of the coarser stages' grids (..., H/f, W/f): the
        starting `previous` of this level's passes (exact: sums of integers below 2**24)."""
        total = None
        for i, (grid, f) in enumerate(zip(coarse, self.config.coarse_factors)):
            part = spread(lookup(self.t[f"coarse_embed{i}"], grid.long()), f)
            total = part if total is None else total + part
        return total.movedim(-1, -3)

    def class_context(self, classes: torch.Tensor) -> torch.Tensor:
        """(count, C, 1, 1) integer embedding of each grid's class (count,), zero for class -1."""
        rows = self.t["class_embed"][classes.long().clamp(min=0)]
        return torch.where((classes >= 0).view(-1, 1), rows, 0.0).view(len(classes), -1, 1, 1)

    def stage_embedding(self, stage: int, indices_stage: torch.Tensor) -> torch.Tensor:
        """(..., C, H, W) embedding of one stage's indices (..., H, W), added to `previous` once known."""
        return lookup(self.t["previous_embed"][stage], indices_stage).movedim(-1, -3)

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
        return self.head_distances(self.hidden(inputs), stages, masks, contexts)

    def hidden(self, inputs: torch.Tensor, coded: torch.Tensor | None = None) -> torch.Tensor:
        """What the network computes over the grid for P passes' inputs (P, C, H, W), before
        the positions: head_distances takes it from there. coded: (H, W) bool, the only
        positions head_distances will be asked for (None: any); the int8 path then skips
        what they do not depend on."""
        with exact_float32():
            return self._trunk_but_last(inputs, coded) if self.int8 else self._trunk(inputs)

    def head_distances(self, hidden: torch.Tensor, stages: list[int], masks: list[torch.Tensor],
                       contexts: list[tuple[torch.Tensor, torch.Tensor, bool]]) -> list[torch.Tensor]:
        """logit_distances from hidden(inputs). Each position's row depends on that position
        alone, so a mask may hold part of a pass's positions (coding.bands): the same rows."""
        with exact_float32():
            out: list[torch.Tensor] = []
            p = 0
            while p < len(stages):
                end = p + 1
                while (end < len(stages) and stages[end] == stages[p] and masks[end] is masks[p]
                       and contexts[end][1] is contexts[p][1]):
                    end += 1
                grids = torch.stack([contexts[i][0][:stages[p] + 1] for i in range(p, end)])
                out.extend(self._head(hidden[p:end], stages[p], masks[p], grids, contexts[p][1], contexts[p][2]))
                p = end
        return out

    def _head(self, hidden: torch.Tensor, stage: int, mask: torch.Tensor, grids: torch.Tensor,
              known: torch.Tensor, far: bool) -> list[torch.Tensor]:
        """Logit distances (n, K) for each of G passes: hidden (G, ...) from the trunk, grids
        (G, stage + 1, H, W)."""
        count, k = grids.shape[0], self.config.codebook_size
        logits, gate = self._head_rows(hidden, stage, mask)
        cells, rows, value = self._matches(stage, mask, grids, known, far)  # per pair: flat row * K + k, row, v
        if len(cells):  # logit + floor(M x g / 16), M a cell's sum of v: exact, counted in 1/16 steps
            steps = int(math.log2(GATE_STEPS))
            flat = logits.view(-1).bitwise_left_shift_(steps)
            flat.index_add_(0, cells, value * gate.index_select(0, rows))
            flat.bitwise_right_shift_(steps)
        peak = logits.amax(dim=1, keepdim=True)
        distance = torch.sub(peak, logits, out=logits).clamp_(max=TABLE_SIZE - 1)
        return list(distance.view(count, -1, k))

    def _matches(self, stage: int, mask: torch.Tensor, grids: torch.Tensor, known: torch.Tensor,
                 far: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The match term of the coded positions (rows g * n + i for position i of grid g) as
        pairs (cell row * K + k, its row, v, int32): the term M[row, k] is the sum of v over
        the pairs of the cell, one per known neighbour of the position that holds index k, v
        the weight v[stage, offset], or with conditional_match, the diverged weight where the
        neighbour's earlier-stage indices differ from the position's; in a far pass, the far
        weights at offsets FAR_DILATION times larger. M is 0 at cells without a pair."""
        count, k = grids.shape[0], self.config.codebook_size
        v = self.t["far_match_weight"] if far else self.t["match_weight"][stage]
        conditional = self.config.conditional_match and stage > 0 and not far
        v_diverged = self.t["diverged_match_weight"][stage] if conditional else v
        used = torch.arange(len(v))[(v != 0) | (v_diverged != 0)]
        n, offset, position, neighbour, here = self._neighbour_pairs(mask, known, used, FAR_DILATION if far else 1)
        if not len(offset):
            empty = torch.zeros(0, dtype=torch.long)
            return empty, empty, torch.zeros(0, dtype=torch.int32)
        rows = (torch.arange(count) * n).view(-1, 1) + position  # (G, pairs)
        cells = rows * k + columns(grids[:, stage].flatten(1), neighbour)
        value = v.int().index_select(0, offset).expand(count, -1)
        if conditional:
            prefix = prefix_keys(grids[:, :stage].flatten(2), k)  # (G, H*W)
            same_prefix = columns(prefix, neighbour) == columns(prefix, here)
            value = torch.where(same_prefix, value, v_diverged.int().index_select(0, offset))
        return cells.view(-1), rows.view(-1), value.reshape(-1)

    def _neighbour_pairs(self, mask: torch.Tensor, known: torch.Tensor, used: torch.Tensor, dilation: int):
        """For the coded positions (row-major) of `mask` and the match offsets `used` (times
        dilation): (n coded positions, and per (offset, position) pair whose neighbour is inside
        the grid and known, in position order: the offset (its number in the 5x5 window), the
        position number, the neighbour's and the position's flat index)."""
        key = (tuple(mask.shape), mask.numpy().tobytes(), known.numpy().tobytes(), tuple(used.tolist()), dilation)
        pairs = self._pairs.get(key)
        if pairs is None:
            rows, cols = mask.shape
            width = 2 * MATCH_RADIUS + 1
            positions = mask.nonzero()  # (n, 2), row-major
            r = positions[:, 0].view(1, -1) + ((used // width - MATCH_RADIUS) * dilation).view(-1, 1)  # (offsets, n)
            c = positions[:, 1].view(1, -1) + ((used % width - MATCH_RADIUS) * dilation).view(-1, 1)
            inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
            flat = r.clamp(0, rows - 1) * cols + c.clamp(0, cols - 1)
            # position by position: the sums over a position's neighbours then touch its K cells only
            position, which = (inside & known.flatten()[flat]).t().nonzero(as_tuple=True)
            here = positions[position, 0] * cols + positions[position, 1]
            pairs = (len(positions), used[which], position, flat[which, position], here)
            size = sum(t.numel() * t.element_size() for t in pairs[1:])
            if len(self._pairs) >= 64 or sum(self._pairs_bytes.values()) + size > PAIR_CACHE_BYTES:
                self._pairs.clear()
                self._pairs_bytes.clear()
            if size <= PAIR_CACHE_BYTES:
                self._pairs[key], self._pairs_bytes[key] = pairs, size
        return pairs


def dilated(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """(H, W) bool: the positions within `radius` rows and columns of a True one of mask."""
    for _ in range(radius):
        grown = mask.clone()
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        mask = grown.clone()
        mask[:, 1:] |= grown[:, :-1]
        mask[:, :-1] |= grown[:, 1:]
    return mask


def prefix_keys(earlier: torch.Tensor, k: int) -> torch.Tensor:
    """(G, H*W) int64 keys of the earlier stages' indices (G, S, H*W) at each position, equal
    exactly where all S indices are equal: the indices in base k, renumbered densely before
    they could overflow."""
    keys = earlier[:, 0]
    for s in range(1, earlier.shape[1]):
        if int(keys.max()) >= (1 << 62) // k:
            keys = torch.unique(keys, return_inverse=True)[1]
        keys = keys * k + earlier[:, s]
    return keys


def columns(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """rows[:, index] of a (G, N) tensor: for one row (the codec's case) by a 1-D index_select,
    three times faster than one along dimension 1."""
    if len(rows) == 1:
        return rows.reshape(-1).index_select(0, index).view(1, -1)
    return rows.index_select(1, index)


def lookup(table: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """table[indices] (the rows of table at indices (...), shape (..., *table.shape[1:])), by
    index_select, several times faster than indexing with a tensor."""
    return table.index_select(0, indices.reshape(-1)).view(*indices.shape, *table.shape[1:])


def spread(embedded: torch.Tensor, factor: int) -> torch.Tensor:
    """(..., h, w, f*f, C) per-sub-position embeddings -> (..., h*f, w*f, C)."""
    *lead, h, w, _, c = embedded.shape
    x = embedded.reshape(*lead, h, w, factor, factor, c)
    n = len(lead)
    x = x.permute(*range(n), n, n + 2, n + 1, n + 3, n + 4)
    return x.reshape(*lead, h * factor, w * factor, c)
