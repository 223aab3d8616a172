"""Configuration dataclasses. They are stored as JSON inside every weights file,
so a model rebuilds itself from its file alone (the nanoGPT habit)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

from .quality import Levels

LAMBDA_FACTOR_BOUND = 8.0  # HierarchyConfig.lambda_factor stays within [1/8, 8]


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a VQ-VAE: conv autoencoder with a residual-VQ bottleneck."""

    in_channels: int = 3
    # Channels after each stride-2 stage of the encoder (and, reversed, before each
    # upsampling stage of the decoder). len(widths) sets the stride: 2 ** len(widths).
    widths: tuple[int, ...] = (64, 96, 128)
    res_blocks: int = 3  # residual blocks at the lowest resolution, in encoder and decoder
    latent_dim: int = 16  # dimension of the vectors that get quantized
    codebook_size: int = 256  # K, entries per residual stage
    num_stages: int = 8  # residual VQ stages; quality level q decodes the first q
    # EMA codebook (van den Oord et al. 2017, appendix) and dead-code restart.
    ema_decay: float = 0.99
    dead_code_threshold: float = 1.0  # EMA usage count under which a code is restarted
    commitment_weight: float = 0.25  # beta in the VQ-VAE loss

    @property
    def stride(self) -> int:
        return 2 ** len(self.widths)


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained (stored next to the model config for the record)."""

    steps: int = 20000
    batch_size: int = 16
    crop_size: int = 128
    learning_rate: float = 3e-4
    lr_final_fraction: float = 0.1  # cosine decay to this fraction of the peak rate
    warmup_steps: int = 200
    grad_clip: float = 1.0  # max global gradient norm; steps with a non-finite loss are skipped
    seed: int = 0
    checkpoint_every: int = 250
    eval_every: int = 1000
    held_out_images: int = 3  # last N images of the data folder are held out
    # hold out every (images / held_out_images)-th image instead of the last ones: for data
    # sorted by class, such as mnist5k.npz (500 of each digit in order; its last 500 are all 9s)
    held_out_spread: bool = False
    extra_scales: tuple[float, ...] = (0.6,)  # downscaled copies of the photos join the pool
    threads: int = 0  # torch threads; 0 = torch's default
    # Divergence guard: when the mean loss of the last 20 steps exceeds spike_factor times its
    # long-run mean, roll back to the last checkpoint and halve the learning rate. 0 disables it.
    spike_factor: float = 3.0


@dataclass(frozen=True)
class PriorConfig:
    """Shape of the context prior over index grids (vqcodec.nn.prior)."""

    num_stages: int = 8  # = the model's residual stages
    codebook_size: int = 256  # = the model's K
    channels: int = 32  # width of the integer conv trunk
    layers: int = 2  # 3x3 conv layers in the trunk
    schedule: str = "grouped"  # coding order: "grouped" (few passes) or "raster" (one per position)
    # copy term with a second set of weights for neighbours whose earlier-stage indices differ
    conditional_match: bool = False
    nested_stages: int = 1  # "grouped": the first stages coded in 5 nested groups, the rest in 2
    # "grouped": stage 0's first group split in three on the x8 lattice, copying from 4 positions away
    coarse_groups: bool = False
    # hierarchical models: for every stage of the coarser levels (coarse to fine), how many
    # times coarser its grid is than this one; their indices condition every pass
    coarse_factors: tuple[int, ...] = ()
    # class-conditional (generation): a learned embedding per class added to every position's
    # input; coding files adds none (the "no class" input, which training also sees)
    num_classes: int = 0
    # "raster": how many stages are coded position by position (0 = all); the later ones go in
    # two checkerboard halves (far fewer passes where sampling needs no strict order)
    raster_stages: int = 0


@dataclass(frozen=True)
class PriorTrainConfig:
    """How a prior is trained (stored in the weights for the record)."""

    steps: int = 4000
    batch_size: int = 16
    crop_size: int = 24  # index-grid crop: 24 x 24 indices = 192 x 192 pixels at stride 8
    learning_rate: float = 2e-3
    lr_final_fraction: float = 0.05
    warmup_steps: int = 100
    seed: int = 0
    checkpoint_every: int = 250
    eval_every: int = 1000
    held_out_images: int = 3  # the same last images the VQ-VAE held out
    held_out_spread: bool = False  # ... or the same evenly spread ones (TrainConfig.held_out_spread)
    extra_scales: tuple[float, ...] = (0.6,)
    mirror: bool = True  # also learn the grids of the mirrored images
    threads: int = 0
    sample_temperature: float = 1.0  # the temperature `vqcodec generate` uses by default for this model
    # class-conditional priors (PriorConfig.num_classes): the share of training examples shown
    # without their class, which is how files are coded
    class_dropout: float = 0.5
    # ... and the classifier-free guidance `vqcodec generate` uses by default (nn.prior.GuidedSampler)
    sample_guidance: float = 0.0
    # > 0: refine the prior already inside the weights on the grids that the rate-aware encoder
    # (vqcodec.nn.rdoq, this tradeoff) produces with it: one round of entropy-constrained VQ design
    rate_tradeoff: float = 0.0


@dataclass(frozen=True)
class EnhanceConfig:
    """Shape of the enhancement layer (vqcodec.nn.enhance): a second, finer VQ autoencoder
    that codes what the base model's top level leaves out, for the quality levels above it."""

    # channels per stride-2 stage (the first at half resolution, where the base image joins
    # the detail in the decoder): stride 2 ** len(widths)
    widths: tuple[int, ...] = (64, 96)
    res_blocks: int = 1
    latent_dim: int = 16
    codebook_size: int = 256
    # The base level the layer builds on: quality 1..base_stages are the base model's own levels,
    # base_stages + n is that base level plus the layer's first n stages. 0 = the base's top level.
    base_stages: int = 0
    num_stages: int = 4  # residual VQ stages of the layer
    ema_decay: float = 0.99
    dead_code_threshold: float = 1.0
    commitment_weight: float = 0.25

    @property
    def stride(self) -> int:
        return 2 ** len(self.widths)


@dataclass(frozen=True)
class HierarchyConfig:
    """Shape and rate ladder of the hierarchical ECVQ model (vqcodec.nn.hierarchy)."""

    widths: tuple[int, ...] = (64, 96, 128, 160)  # channels at strides 2, 4, 8, 16
    res_blocks: int = 2  # residual blocks at the first level's stride, in analysis and synthesis
    # residual blocks at stride 4, in the analysis (before the stride-8 convolution) and in the
    # synthesis (after the stride-4 level); they start as identities, so a model without them
    # warm-starts onto them decoding as before
    stride4_blocks: int = 0
    # the synthesis after the last level (the stride-4 state up to the pixels) scales and
    # shifts its features per prefix length, which the decoder knows from the file: one
    # decoder sharp at the top of the ladder and smooth at the bottom, at no cost in bits. It
    # starts as the identity, so a model without it warm-starts onto it decoding as before.
    prefix_film: bool = False
    # the prefixes that reach the last level decode with a synthesis of their own (a second
    # copy of the layers after it, FiLM included), so the decoder of the lowest rates no longer
    # has to serve the highest; a model without it warm-starts onto it with both copies equal,
    # decoding as before. The same work per image; more weights.
    fine_synthesis: bool = False
    # coarse to fine: the global stage order; each stride is the one before or half of it (a
    # level at the same stride refines the same decoder state further)
    level_strides: tuple[int, ...] = (16, 8, 4)
    level_dims: tuple[int, ...] = (16, 8, 4)  # codebook dimension per level
    level_stages: tuple[int, ...] = (3, 3, 3)  # ECVQ stages per level
    codebook_size: int = 256
    entropy_channels: int = 64  # width of each stage's index-distribution network
    commitment_weight: float = 0.25
    # loss = bpp + lambda * MSE (0-255 scale); lambda grows geometrically along the stage
    # ladder, from the one-stage prefix to the full model
    lambda_low: float = 0.002
    lambda_high: float = 0.05
    # index choice: argmin ecvq_scale * lambda * ||r - c||^2 + bits (0 = nearest code)
    ecvq_scale: float = 1.0
    rate_in_training: bool = True  # False: nearest-code training, bits only measured (ablation)
    # exponent p: each example's loss x (the ladder's geometric-mean lambda / its lambda)^p; at
    # p = 1 the prefixes' distortions weigh alike in the shared transforms instead of the
    # high-lambda prefixes dominating (true means 1); each prefix's own rate-distortion optimum
    # is unchanged
    balance_prefixes: float = 0.0
    # the training entropy model also sees the stage's own anchor codes (checkerboard) at the
    # other half of the positions, as the integer priors do
    spatial_context: bool = False
    # strides of the levels whose stages share one latent projection (residual VQ of one latent,
    # as in today's VQ-VAE, which maps onto such a stride-8 level: HierarchicalVQ.load_vqvae);
    # the first level at each of these strides only; other levels give each stage a fresh
    # projection of what the decoder state still misses
    shared_latent_strides: tuple[int, ...] = ()
    # the encoder's ECVQ lambda as a multiple of each quality level's training lambda (at the
    # codec's RATE_TRADEOFF); a property of each trained model, measured on held-out photos
    # (docs/EXPERIMENTS.md: 1 suits the stride-8/4 ladders with the prior-driven choice)
    encode_lambda_scale: float = 1.0
    # the quality levels, lowest first: (stages of the ladder kept, multiple of that prefix's
    # lambda for the encoder's ECVQ), or (stages, one multiple per level of the model), which
    # shares a level's bits between the coarse and the fine stages; a multiple under 1 weighs
    # bits more, for a rate between two prefixes. Chosen on held-out photos for each trained
    # model (docs/EXPERIMENTS.md). Empty: one level per prefix, at its own lambda.
    quality_ladder: tuple[tuple[float, ...], ...] = ()
    # each image's ECVQ lambda x (activity_reference / its activity) ** activity_exponent, where
    # an image's activity is metrics.activity of its pixels (bounded: lambda_factor): an image with
    # less detail, whose distortion is smaller, gets more of the bits. Mean PSNR over images
    # asks for that (each image's PSNR falls with log MSE, so a bit is worth more dB where the
    # MSE is small); one lambda for all would serve mean MSE. 0: one lambda for every image.
    # Chosen on held-out photos for each trained model (docs/EXPERIMENTS.md).
    activity_exponent: float = 0.0
    activity_reference: float = 1.0
    # the fields above that only steer an encoder's choice of indices, never what indices decode
    # to: a file that changes only these decodes its earlier files (weights_io.save_with_encoder_settings)
    ENCODER_SETTINGS: ClassVar[tuple[str, ...]] = ("encode_lambda_scale", "quality_ladder", "activity_exponent",
                                                   "activity_reference")

    def __post_init__(self):
        if not (self.activity_exponent >= 0 and self.activity_reference > 0):
            raise ValueError(f"activity_exponent must be >= 0 and activity_reference > 0, got "
                             f"{self.activity_exponent} and {self.activity_reference}")
        total, levels = sum(self.level_stages), len(self.level_stages)
        valid = all(len(entry) in (2, 1 + levels) and entry[0] == int(entry[0]) and 1 <= entry[0] <= total
                    and min(entry[1:]) > 0 for entry in self.quality_ladder)
        ladder = self.ladder if valid else ()
        # a later level keeps at least the stages of the one before, and where it keeps the same,
        # codes at least one level at a larger multiple (all smaller or equal: a lower rate)
        rising = all(n1 > n0 or (n1 == n0 and any(b > a for a, b in zip(m0, m1)))
                     for (n0, m0), (n1, m1) in zip(ladder, ladder[1:]))
        if not (valid and rising):
            raise ValueError(f"quality_ladder {self.quality_ladder}: each level keeps 1..{total} stages at a "
                             f"positive lambda multiple (one, or one per level: {levels}), with stages "
                             "non-decreasing and, at equal stages, some multiple larger than the level before's")

    @property
    def stride(self) -> int:
        return max(self.level_strides)

    @property
    def ladder(self) -> tuple[tuple[int, tuple[float, ...]], ...]:
        """(stages kept, lambda multiple of each level's stages) of each quality level 1, 2, ..."""
        levels = len(self.level_stages)
        return (tuple((int(entry[0]), tuple(entry[1:]) * (levels if len(entry) == 2 else 1))
                      for entry in self.quality_ladder)
                or tuple((n, (1.0,) * levels) for n in range(1, sum(self.level_stages) + 1)))

    def encoder_settings(self) -> dict:
        """The fields of ENCODER_SETTINGS, by name."""
        return {key: getattr(self, key) for key in self.ENCODER_SETTINGS}

    def with_encoder_settings(self, **settings) -> HierarchyConfig:
        """This config with other encoder settings (ENCODER_SETTINGS; lists as JSON gives them)."""
        unknown = set(settings) - set(self.ENCODER_SETTINGS)
        if unknown:
            raise ValueError(f"not encoder settings: {sorted(unknown)} (those are {', '.join(self.ENCODER_SETTINGS)})")
        return dataclasses.replace(self, **{key: as_tuples(value) for key, value in settings.items()})

    def lambda_factor(self, activity: float) -> float:
        """The multiple of every level's ECVQ lambda for an image of this activity (1 at exponent 0)."""
        ratio = self.activity_reference / max(activity, self.activity_reference * 2.0 ** -20)
        return min(max(ratio ** self.activity_exponent, 1 / LAMBDA_FACTOR_BOUND), LAMBDA_FACTOR_BOUND)

    def quality_levels(self) -> Levels:
        return Levels(tuple(self.level_stages), tuple(n for n, _ in self.ladder))


def from_dict(cls, data: dict):
    """Build config dataclass `cls` from a JSON dict (unknown fields are an error), turning
    lists back into tuples."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**{k: as_tuples(v) for k, v in data.items()})


def as_tuples(value):
    """JSON lists (or tuples holding lists), nested ones too, as tuples."""
    return tuple(as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def to_json(config) -> str:
    return json.dumps(dataclasses.asdict(config), sort_keys=True)
