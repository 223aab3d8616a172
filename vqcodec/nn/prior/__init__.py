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

Modules, one role each: schedule (the coding order), integer_model (IntegerPrior and the integer
grid), exact (exact float32 arithmetic on integers), float_model (ContextPrior, trained),
coding (iter_passes / encode_passes / decode_passes, CodedPass and coder_intervals), sampling (Sampler, GuidedSampler).
"""
from .coding import (BAND_POSITIONS, PASS_CHUNK_POSITIONS, CodedPass, bands, coder_intervals, decode_passes,
                     empty_embedding, encode_passes, iter_passes, starting_embedding)
from .float_model import CONTINUE_RULE, ContextPrior, continues
from .integer_model import (ACTIVATION_BITS, ACTIVATION_MAX, BIAS_MAX, EMBED_MAX, FAR_DILATION, FREQ_BITS, GATE_MAX,
                            GATE_STEPS, LOGIT_STEPS, MATCH_RADIUS, MATCH_SCALE, MAX_EXPONENT, TABLE_SIZE, WEIGHT_MAX,
                            IntegerPrior, check_config, frequency_table)
from .sampling import GuidedSampler, Sampler
from .schedule import SCHEDULES, far_pass, group_map, pass_schedule, stage_passes

__all__ = ["ACTIVATION_BITS", "ACTIVATION_MAX", "BAND_POSITIONS", "BIAS_MAX", "CONTINUE_RULE", "EMBED_MAX", "FAR_DILATION",
           "FREQ_BITS", "GATE_MAX", "GATE_STEPS", "LOGIT_STEPS", "MATCH_RADIUS", "MATCH_SCALE", "MAX_EXPONENT",
           "PASS_CHUNK_POSITIONS", "SCHEDULES", "TABLE_SIZE", "WEIGHT_MAX", "CodedPass", "ContextPrior", "GuidedSampler",
           "IntegerPrior", "Sampler", "bands", "check_config", "coder_intervals", "continues", "decode_passes", "empty_embedding",
           "encode_passes", "far_pass", "frequency_table", "group_map", "iter_passes", "pass_schedule",
           "stage_passes", "starting_embedding"]
