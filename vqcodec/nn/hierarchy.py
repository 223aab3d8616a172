"""Hierarchical VQ autoencoder trained with a rate term (the photo codec v2 model).

    image (B,3,H,W) ─analysis─> f4 (/4) ─> f8 (/8) ─> f16 (/16)        encoder features per level
                                  │          │           │
    decoding, coarse to fine:     │          │           v
      y16 = 0 ──[stage: r = f16 - y16 ─P_in─> ECVQ ─P_out─> y16 += q] x S16
      y16 ─up─> y8  ──[the same with f8] x S8
      y8  ─up─> y4  ──[the same with f4] x S4
      y4  ─up─> image

Every stage quantizes a fresh low-dimensional projection of what the decoder still misses at
its level (NVTC, Feng et al. CVPR 2023: stride 16/8/4 with codebook dimension 16/8/4), or, at
the levels of config.shared_latent_strides, all the level's stages quantize one latent
projection by residual VQ (today's VQ-VAE, whose weights map onto such a level: load_vqvae). A
level may repeat the stride of the one before: it goes on refining the same decoder state, with
projections of its own (a finer quantizer at the finest stride, as NVTC's dimension 4). A
stage's index distribution is predicted from the decoder state before it (the coarser levels
and the earlier stages of its level), so each index costs bits under that conditional model.

Indices are chosen by entropy-constrained VQ (Chou, Lookabaugh & Gray 1989):
    index = argmin_k  weight * ||r - c_k||^2 + bits_k,
and the model trains on  bpp + lambda * MSE(255-scale), with one lambda per prefix of stages:
the global stage order (all of level 16, then 8, then 4) is one rate ladder, and each training
example keeps a random prefix of it (quantizer dropout, SoundStream) at that prefix's lambda.

Tensor in, tensor out: no files, bytes, or dtype policy here. Distances and log-probabilities
are float32 even under bf16 autocast.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import HierarchyConfig
from .autoencoder import GDN, VQVAE, ResidualBlock, subpixel_conv_transpose
from .quantize import kmeans


def checkerboard(h: int, w: int, device=None) -> torch.Tensor:
    """(h, w) bool, True at the anchor positions ((row + column) even)."""
    rows = torch.arange(h, device=device).view(-1, 1)
    return (rows + torch.arange(w, device=device)) % 2 == 0


def _conv_down(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 5, stride=2, padding=2)


def _conv_up(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1)


class ECVQStage(nn.Module):
    """One quantization stage: projection in, a codebook of K vectors (EMA-updated, van den
    Oord et al. 2017, appendix A.1: with ECVQ assignments this is the centroid step of
    Chou et al.'s design loop), projection out, and the network that predicts the stage's
    index distribution from the decoder state."""

    def __init__(self, channels: int, dim: int, codebook_size: int, entropy_channels: int,
                 spatial_context: bool = False, projections: bool = True, decay: float = 0.99,
                 dead_code_threshold: float = 0.5):
        super().__init__()
        self.decay, self.dead_code_threshold = decay, dead_code_threshold
        if projections:  # else the level's shared latent projection serves every stage
            self.project_in = nn.Conv2d(channels, dim, 1)
            self.project_out = nn.Conv2d(dim, channels, 1)
        self.register_buffer("codebook", torch.randn(codebook_size, dim) / math.sqrt(dim))
        self.register_buffer("ema_count", torch.ones(codebook_size))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.entropy = nn.Sequential(
            nn.Conv2d(channels, entropy_channels, 3, padding=1), nn.GELU(),
            nn.Conv2d(entropy_channels, entropy_channels, 1), nn.GELU(),
            nn.Conv2d(entropy_channels, codebook_size, 1),
        )
        # checkerboard context (He et al., CVPR 2021): the second half of the positions also
        # sees the codes chosen at the first half, as the integer priors that code files do
        self.context = nn.Conv2d(dim, entropy_channels, 5, padding=2) if spatial_context else None

    def _log2_p(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.entropy[1:](hidden).float()
        return F.log_softmax(logits, dim=1) / math.log(2)

    def log2_probabilities(self, state: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) log2 p(index | decoder state), float32 (the anchor pass of a stage
        with spatial context)."""
        return self._log2_p(self.entropy[0](state))

    def distances(self, residual: torch.Tensor) -> torch.Tensor:
        """(B, h, w, K) squared distances of residual (B, D, h, w) float32 to every code."""
        flat = residual.permute(0, 2, 3, 1)
        return (flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ self.codebook.t()
                + self.codebook.pow(2).sum(1))

    def choose(self, residual: torch.Tensor | None, log2_p: torch.Tensor | None, weight: torch.Tensor | None,
               distances: torch.Tensor | None = None) -> torch.Tensor:
        """Indices (B, h, w) minimizing weight * ||residual - c_k||^2 - log2 p_k (plain nearest
        code when weight is None). residual: (B, D, h, w) float32, or its distances (B, h, w, K)
        to the codes; weight: (B,) or None."""
        if distances is None:
            distances = self.distances(residual)
        if weight is None:
            return distances.argmin(-1)
        return (distances * weight.view(-1, 1, 1, 1) - log2_p.permute(0, 2, 3, 1)).argmin(-1)

    def code(self, residual: torch.Tensor, state: torch.Tensor, weight: torch.Tensor | None,
             entropy_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (B, h, w) of residual and their log2 probabilities (B, h, w), float32,
        given the decoder state: one pass, or with spatial context the anchor half of the
        checkerboard first and the other half conditioned on the anchors' codes.
        entropy_state: what the entropy model sees instead of state (a detached copy)."""
        hidden = self.entropy[0](state if entropy_state is None else entropy_state)
        log2_p = self._log2_p(hidden)
        distances = self.distances(residual.detach())
        indices = self.choose(None, log2_p.detach(), weight, distances)
        if self.context is not None:
            anchors = checkerboard(*indices.shape[1:], indices.device)
            anchor_codes = self.lookup(indices) * anchors
            log2_p_ctx = self._log2_p(hidden + self.context(anchor_codes.to(hidden.dtype)))
            others = self.choose(None, log2_p_ctx.detach(), weight, distances)
            indices = torch.where(anchors, indices, others)
            log2_p = torch.where(anchors, log2_p, log2_p_ctx)
        return indices, log2_p.gather(1, indices.unsqueeze(1)).squeeze(1)

    @staticmethod
    def state_from_codebook(codebook: torch.Tensor, count: torch.Tensor) -> dict[str, torch.Tensor]:
        """A stage's codebook buffers (state-dict names within the stage) for `codebook` whose
        codes were each used `count` times: EMA sums to match, marked initialized."""
        return {"codebook": codebook, "ema_count": count, "ema_sum": codebook * count.unsqueeze(1),
                "initialized": torch.ones((), dtype=torch.bool)}

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) codebook vectors of indices (B, h, w)."""
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2)

    @torch.no_grad()
    def initialize(self, residual: torch.Tensor) -> None:
        """k-means on the first batch's projected residuals (Jukebox, SoundStream)."""
        flat = residual.permute(0, 2, 3, 1).reshape(-1, residual.shape[1]).float()
        self.codebook.copy_(kmeans(flat, self.codebook.shape[0]))
        self.ema_sum.copy_(self.codebook)
        self.ema_count.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def update(self, residual: torch.Tensor, indices: torch.Tensor, active: torch.Tensor) -> None:
        """EMA step of each code towards the mean of the residuals assigned to it (examples
        with active > 0 only), then restart codes whose usage fell below the threshold with
        residuals of this batch."""
        d = residual.shape[1]
        keep = active.bool()
        if not bool(keep.any()):
            return
        flat = residual[keep].permute(0, 2, 3, 1).reshape(-1, d)
        chosen = indices[keep].reshape(-1)
        counts = torch.bincount(chosen, minlength=self.codebook.shape[0]).float()
        sums = torch.zeros_like(self.ema_sum).index_add_(0, chosen, flat)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.codebook.copy_(self.ema_sum / self.ema_count.clamp(min=1e-5).unsqueeze(1))
        dead = self.ema_count < self.dead_code_threshold
        if bool(dead.any()):
            picks = flat[torch.randint(flat.shape[0], (int(dead.sum()),), device=flat.device)]
            self.codebook[dead] = picks
            self.ema_sum[dead] = picks * self.dead_code_threshold
            self.ema_count[dead] = self.dead_code_threshold


class PrefixFiLM(nn.Module):
    """Per prefix length n (1..prefixes), a scale and a shift per channel, starting at 1 and 0:
    feature-wise linear modulation (FiLM, Perez et al. 2018) by the rate, as the gain units of
    variable-rate codecs (Cui et al. 2021, "Asymmetric Gained Deep Image Compression")."""

    def __init__(self, prefixes: int, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(prefixes, channels))
        self.shift = nn.Parameter(torch.zeros(prefixes, channels))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), keep (B,): each example's prefix length."""
        b, c = x.shape[:2]
        rows = keep.long() - 1
        return x * self.scale[rows].view(b, c, 1, 1).to(x.dtype) + self.shift[rows].view(b, c, 1, 1).to(x.dtype)


class HierarchicalVQ(nn.Module):
    """Analysis transform, the levels of ECVQ stages, synthesis transform (see module docstring)."""

    def __init__(self, cfg: HierarchyConfig):
        super().__init__()
        self.config = cfg
        c2, c4, c8, c16 = cfg.widths
        first = cfg.level_strides[0]
        if first not in (8, 16):
            raise ValueError(f"the first level's stride must be 8 or 16, not {first}")

        def trunk(channels: int) -> list[nn.Module]:  # the residual blocks, at the first level's stride
            return [ResidualBlock(channels) for _ in range(cfg.res_blocks)]
        def stride4(count: int) -> list[nn.Module]:
            return [ResidualBlock(c4, identity=True) for _ in range(count)]
        self.analysis = nn.ModuleDict({
            "4": nn.Sequential(_conv_down(3, c2), GDN(c2), _conv_down(c2, c4), GDN(c4), *stride4(cfg.stride4_blocks)),
            "8": nn.Sequential(_conv_down(c4, c8), GDN(c8), *(trunk(c8) if first == 8 else [])),
        })
        if first == 16:
            self.analysis["16"] = nn.Sequential(_conv_down(c8, c16), *trunk(c16))
        strides = cfg.level_strides
        if any(fine not in (coarse, coarse // 2) for coarse, fine in zip(strides, strides[1:])) or strides[-1] < 4:
            raise ValueError(f"level strides {strides}: each level's stride is the one before or half of it, down to 4")
        shared = set(cfg.shared_latent_strides)
        if not shared <= set(strides):
            raise ValueError(f"shared_latent_strides {sorted(shared)} are not all level strides")
        # the first level at each shared stride shares one latent; a later level at that stride
        # quantizes fresh projections of what is still missing
        self.latent_keys = tuple(str(s) if s in shared and strides.index(s) == i else None for i, s in enumerate(strides))
        self.levels = nn.ModuleList(
            nn.ModuleList(ECVQStage(self.channels(stride), dim, cfg.codebook_size, cfg.entropy_channels,
                                    cfg.spatial_context, projections=key is None)
                          for _ in range(stages))
            for stride, dim, stages, key in zip(strides, cfg.level_dims, cfg.level_stages, self.latent_keys))
        dims = {int(key): dim for key, dim in zip(self.latent_keys, cfg.level_dims) if key is not None}
        self.latent_in = nn.ModuleDict({str(s): nn.Conv2d(self.channels(s), dims[s], 1) for s in sorted(shared)})
        self.latent_out = nn.ModuleDict({str(s): nn.Conv2d(dims[s], self.channels(s), 1) for s in sorted(shared)})
        if first == 16:
            self.refine16 = nn.Sequential(*trunk(c16))
            self.up16 = nn.Sequential(_conv_up(c16, c8), GDN(c8, inverse=True))
        self.refine8 = nn.Sequential(*trunk(c8)) if first == 8 else ResidualBlock(c8)
        self.up8 = nn.Sequential(_conv_up(c8, c4), GDN(c4, inverse=True))
        def synthesis() -> dict[str, nn.Module]:  # the layers after the last level
            layers = {"refine4": ResidualBlock(c4), "detail4": nn.Sequential(*stride4(cfg.stride4_blocks)),
                      "up4": nn.Sequential(_conv_up(c4, c2), GDN(c2, inverse=True), _conv_up(c2, 3))}
            if cfg.prefix_film:  # before the synthesis at stride 4, and before its last convolution
                layers["film"] = nn.ModuleList([PrefixFiLM(self.num_stages, c4), PrefixFiLM(self.num_stages, c2)])
            return layers
        for name, layer in synthesis().items():
            self.add_module(name, layer)
        if cfg.fine_synthesis:  # the prefixes that reach the last level decode with these
            self.fine = nn.ModuleDict(synthesis())

    def channels(self, stride: int) -> int:
        """Feature channels at stride 4, 8 or 16 (config.widths are those at 2, 4, 8, 16)."""
        return self.config.widths[int(math.log2(stride)) - 1]

    # -- one level's stages ------------------------------------------------------------------
    def quantizer_level(self, key: str) -> int | None:
        """The level whose quantizer a state-dict key belongs to (its stages, or its shared
        latent projections); None for the transforms."""
        part = key.split(".")
        if part[0] == "levels":
            return int(part[1])
        if part[0] in ("latent_in", "latent_out"):
            return self.latent_keys.index(part[1])
        return None

    def starts_as_identity(self, key: str) -> bool:
        """Whether a state-dict key belongs to the stride-4 residual blocks or the prefix FiLM,
        which start as identities (config.stride4_blocks, prefix_film), so a model without them
        can warm-start onto them."""
        part = key.split(".")
        if part[0] == "fine":  # the fine synthesis: the same layers
            part = part[1:]
        return part[0] in ("detail4", "film") or (part[:2] == ["analysis", "4"] and int(part[2]) >= 4)

    @torch.no_grad()
    def silence_level(self, level: int) -> None:
        """Zero what a level adds to the decoder state (its shared latent's output projection,
        or every stage's), so that the model decodes as it would without the level."""
        key = self.latent_keys[level]
        outputs = [self.latent_out[key]] if key is not None else [s.project_out for s in self.levels[level]]
        for layer in outputs:
            layer.weight.zero_()
            layer.bias.zero_()

    def _level_latent(self, level: int, target: torch.Tensor, state: torch.Tensor) -> torch.Tensor | None:
        """The latent all stages of a shared-latent level quantize (float32); None elsewhere."""
        key = self.latent_keys[level]
        return None if key is None else self.latent_in[key](target - state).float()

    def _residual(self, stage: ECVQStage, target: torch.Tensor, state: torch.Tensor,
                  latent: torch.Tensor | None, codes: torch.Tensor | None) -> torch.Tensor:
        """What a stage quantizes (float32): its projection of target - state, or the shared
        latent less the codes of the level's earlier stages."""
        if latent is None:
            return stage.project_in(target - state).float()
        return latent if codes is None else latent - codes

    def _add(self, level: int, stage: ECVQStage, start: torch.Tensor, state: torch.Tensor,
             codes: torch.Tensor | None, quantized: torch.Tensor,
             state_needed: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(decoder state, the level's code sum) after a stage adds `quantized` (B, D, h, w); start
        is the state the level began from. state_needed False, at a shared latent: the state
        is left as it was (an encoder that needs only the code sum from here on)."""
        key = self.latent_keys[level]
        if key is None:
            return state + stage.project_out(quantized.to(state.dtype)), None
        codes = quantized if codes is None else codes + quantized
        return (start + self.latent_out[key](codes.to(start.dtype)) if state_needed else state), codes

    # -- the rate ladder ---------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return sum(self.config.level_stages)

    def stage_lambdas(self) -> torch.Tensor:
        """lambda for each prefix length 1..num_stages, geometric from lambda_low to lambda_high."""
        cfg = self.config
        n = self.num_stages
        t = torch.arange(n, dtype=torch.float32) / max(1, n - 1)
        return cfg.lambda_low * (cfg.lambda_high / cfg.lambda_low) ** t

    # -- transforms --------------------------------------------------------------------------
    def analysis_strides(self) -> list[int]:
        """The strides of the encoder features, in the order analyze_step computes them."""
        return sorted(int(stride) for stride in self.analysis)

    def analyze_step(self, stride: int, x: torch.Tensor) -> torch.Tensor:
        """The encoder features at `stride` from the images (stride 4) or from the features at
        half that stride: a fully convolutional step, so it may run tile by tile."""
        return self.analysis[str(stride)](x - 0.5 if stride == 4 else x)

    def analyze(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """The encoder features {stride: (B, C, H/stride, W/stride)} of every level."""
        features, x = {}, images
        for stride in self.analysis_strides():
            x = features[stride] = self.analyze_step(stride, x)
        return features

    def _descend(self, state: torch.Tensor, stride: int, target: int = 4) -> torch.Tensor:
        """The decoder state at `stride` carried down to the `target` stride (through the levels
        a ladder that ends above it lacks; unchanged where the two are equal)."""
        while stride > target:
            state = self._upsample(stride, state)
            stride //= 2
        return state

    def _upsample(self, stride: int, state: torch.Tensor) -> torch.Tensor:
        """The decoder state at stride 16 or 8 carried to the next finer stride."""
        if stride == 16:
            return self.up16(self.refine16(state))
        return self.up8(self.refine8(state))

    def synthesize(self, state: torch.Tensor, keep: torch.Tensor, float32_last: bool = False) -> torch.Tensor:
        """The image (B, 3, H, W) from the decoder state at stride 4 of the first keep (B,)
        stages (config.prefix_film conditions on keep, config.fine_synthesis picks the layers
        by it). float32_last: the last convolution runs in float32 whatever the autocast
        around it (it makes the pixels)."""
        if "fine" not in self._modules:
            return self._synthesize(self._modules, state, keep, float32_last)
        fine = keep > sum(self.config.level_stages[:-1])  # reaches the last level
        if bool(fine.all()):
            return self._synthesize(self.fine, state, keep, float32_last)
        if not bool(fine.any()):
            return self._synthesize(self._modules, state, keep, float32_last)
        rows = [fine.nonzero()[:, 0], (~fine).nonzero()[:, 0]]
        parts = [self._synthesize(layers, state[r], keep[r], float32_last)
                 for layers, r in zip((self.fine, self._modules), rows)]
        return torch.cat(parts)[torch.cat(rows).argsort()]

    @staticmethod
    def _synthesize(layers, state: torch.Tensor, keep: torch.Tensor, float32_last: bool) -> torch.Tensor:
        """synthesize with one copy of the layers (a mapping with refine4, detail4, up4, film)."""
        film = layers["film"] if "film" in layers else None
        hidden = layers["detail4"](layers["refine4"](state if film is None else film[0](state, keep)))
        hidden = layers["up4"][:-1](hidden)
        if film is not None:
            hidden = film[1](hidden, keep)
        if float32_last:
            with torch.autocast(hidden.device.type, enabled=False):
                return subpixel_conv_transpose(hidden.float(), layers["up4"][-1]) + 0.5
        return layers["up4"][-1](hidden) + 0.5

    def assignment_weight(self, lambdas: torch.Tensor) -> torch.Tensor:
        """ECVQ weight on squared latent distance per example, from its lambda: a latent error
        of d at one position costs about lambda * 255^2 * d / 3 in the loss, as bits do
        (the transforms learn the latent scale that makes this so)."""
        return self.config.ecvq_scale * lambdas * 255.0 ** 2 / 3

    def forward(self, images: torch.Tensor, keep: torch.Tensor, lambdas: torch.Tensor):
        """Train-time pass. keep (B,): stages each example keeps (1..num_stages); lambdas (B,):
        each example's rate-distortion tradeoff. Returns (reconstruction, bits (B,) float32,
        commitment loss (B,) in the loss's units per pixel).

        With config.rate_in_training False the index choice is the nearest code and the bits
        are measured (the entropy networks learn from a detached decoder state) but carry no
        gradient into the autoencoder: the ablation without the rate term."""
        cfg = self.config
        features = self.analyze(images)
        b = images.shape[0]
        pixels = images.shape[2] * images.shape[3]
        weight = self.assignment_weight(lambdas.float())
        choice_weight = weight if cfg.rate_in_training and cfg.ecvq_scale > 0 else None
        bits = images.new_zeros(b, dtype=torch.float32)
        vq_loss = images.new_zeros(b, dtype=torch.float32)
        previous = cfg.level_strides[0]
        state = torch.zeros_like(features[previous])
        global_stage = 0
        for level, (stride, stages) in enumerate(zip(cfg.level_strides, self.levels)):
            state, previous = self._descend(state, previous, stride), stride
            target = features[stride]
            start, codes = state, None
            latent = self._level_latent(level, target, state)
            level_active = None if latent is None else (keep > global_stage).to(state.dtype).view(b, 1, 1, 1)
            for stage in stages:
                active = (keep > global_stage).float()
                global_stage += 1
                residual = self._residual(stage, target, state, latent, codes)
                if not bool(stage.initialized):
                    stage.initialize(residual.detach())
                indices, log2_p = stage.code(residual, state, choice_weight,
                                             None if cfg.rate_in_training else state.detach())
                if self.training:
                    stage.update(residual.detach(), indices, active)
                code = stage.lookup(indices)
                bits = bits - log2_p.sum(dim=(1, 2)) * active
                error = cfg.commitment_weight * (residual - code).pow(2).sum(dim=(1, 2, 3))
                vq_loss = vq_loss + error * weight / pixels * active
                if latent is None:
                    quantized = residual + (code - residual).detach()
                    state = state + stage.project_out(quantized.to(state.dtype)) * active.to(state.dtype).view(b, 1, 1, 1)
                else:  # the straight-through estimate of the level's whole code sum, as ResidualVQ
                    codes = code * active.view(b, 1, 1, 1) + (0 if codes is None else codes)
                    quantized = latent + (codes - latent).detach()
                    state = start + self.latent_out[self.latent_keys[level]](quantized.to(state.dtype)) * level_active
        return self.synthesize(self._descend(state, cfg.level_strides[-1]), keep), bits, vq_loss

    # -- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode_indices(self, images: torch.Tensor, num_stages: int, lam: float | Sequence[float] | None,
                       bfloat16: bool = False, chooser=None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Indices of the first num_stages stages (a list of (B, h, w) grids in coding order),
        chosen by ECVQ at tradeoff lam (one per level, or one for all; None: nearest code),
        and their code length in bits under the training entropy model, per image. bfloat16:
        the networks run under bf16 autocast (distances and log-probabilities stay float32).
        chooser(position, stage, residual) -> (B, h, w): picks each stage's indices instead
        (nn.rdoq's prior-driven choice); the bits are then not measured (zero)."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            features = self.analyze(images)
        return self.encode_features(features, num_stages, lam, bfloat16, chooser)

    @torch.no_grad()
    def encode_features(self, features: dict[int, torch.Tensor], num_stages: int,
                        lam: float | Sequence[float] | None, bfloat16: bool = False, chooser=None,
                        convolve=None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """encode_indices from the encoder features (analyze's, or the same computed tile by tile).
        convolve(fn, x): runs fn, fully convolutional, on the decoder state x (B, C, h, w), where
        it carries the state to a finer level (a caller may run it tile by tile); None: fn(x)."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            first = features[self.config.level_strides[0]]
            b, device = first.shape[0], first.device
            lams = [lam] * len(self.levels) if lam is None or isinstance(lam, (int, float)) else list(lam)
            weights = [None if level_lam is None
                       else self.assignment_weight(torch.full((b,), float(level_lam), device=device))
                       for level_lam in lams]
            previous = self.config.level_strides[0]
            state = torch.zeros_like(features[previous])
            grids, bits = [], torch.zeros(b, device=device)
            run = convolve or (lambda fn, x: fn(x))
            for level, (stride, stages) in enumerate(zip(self.config.level_strides, self.levels)):
                if len(grids) == num_stages:
                    break
                if stride != previous:
                    state = run(functools.partial(self._descend, stride=previous, target=stride), state)
                previous = stride
                start, codes = state, None
                latent = self._level_latent(level, features[stride], state)
                # the decoder state is what the training entropy model, the projections and the
                # next level read: a chooser coding the last level of a shared latent needs none
                later = num_stages > sum(self.config.level_stages[:level + 1])
                state_needed = chooser is None or latent is None or later
                for stage in stages:
                    if len(grids) == num_stages:
                        break
                    residual = self._residual(stage, features[stride], state, latent, codes)
                    if chooser is None:
                        indices, log2_p = stage.code(residual, state, weights[level])
                        bits -= log2_p.sum(dim=(1, 2))
                    else:
                        indices = chooser(len(grids), stage, residual)
                    grids.append(indices)
                    state, codes = self._add(level, stage, start, state, codes, stage.lookup(indices), state_needed)
            return grids, bits

    @torch.no_grad()
    def decode_indices(self, grids: list[torch.Tensor], bfloat16: bool = False) -> torch.Tensor:
        """Reconstruction (B, 3, H, W), float32, from the index grids of a prefix of the stages.
        bfloat16: every layer but the last runs under bf16 autocast; the last makes the
        pixels in float32."""
        b, h, w = grids[0].shape
        previous = self.config.level_strides[0]
        # channels-last, as the encoder's state (from channels-last images): faster convolutions
        state = torch.zeros(b, self.channels(previous), h, w, device=grids[0].device).contiguous(
            memory_format=torch.channels_last)
        remaining = list(grids)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            for level, (stride, stages) in enumerate(zip(self.config.level_strides, self.levels)):
                # levels beyond the prefix add nothing but still upsample
                state, previous = self._descend(state, previous, stride), stride
                start, codes = state, None
                for stage in stages:
                    if not remaining:
                        break
                    state, codes = self._add(level, stage, start, state, codes, stage.lookup(remaining.pop(0)))
            keep = torch.full((b,), len(grids), device=grids[0].device)
            return self.synthesize(self._descend(state, self.config.level_strides[-1]), keep, float32_last=True)

    @torch.no_grad()
    def load_vqvae(self, vqvae: VQVAE) -> None:
        """Start from today's VQ-VAE (nn.autoencoder.VQVAE, three widths, stride 8): its
        encoder, residual VQ codebooks and decoder become the stride-8 level (which must share
        one latent, as its residual VQ does) and the transforms around it; the layers it lacks
        start as identities (the GDN after the third convolution, the stride-4 residual block)
        or add nothing (the finer levels' outputs), so every prefix of the stride-8 stages
        decodes as the VQ-VAE's did. The entropy networks start untrained."""
        cfg, source = self.config, vqvae.config
        if (cfg.level_strides[0] != 8 or 8 not in cfg.shared_latent_strides or cfg.res_blocks != source.res_blocks
                or tuple(cfg.widths[:3]) != tuple(source.widths) or source.num_stages < cfg.level_stages[0]):
            raise ValueError("a VQ-VAE maps onto a ladder that starts with a shared-latent stride-8 level of at "
                             f"most {source.num_stages} stages, widths {source.widths}, {source.res_blocks} residual blocks")
        r, weights = source.res_blocks, vqvae.state_dict()
        mapped = {"latent_in.8": f"encoder.net.{5 + r}", "latent_out.8": "decoder.net.0",
                  "up8.0": f"decoder.net.{r + 1}", "up8.1": f"decoder.net.{r + 2}",
                  "up4.0": f"decoder.net.{r + 3}", "up4.1": f"decoder.net.{r + 4}", "up4.2": f"decoder.net.{r + 5}"}
        mapped.update({f"analysis.4.{i}": f"encoder.net.{i}" for i in range(4)})
        mapped["analysis.8.0"] = "encoder.net.4"
        for i in range(r):
            mapped[f"analysis.8.{2 + i}"] = f"encoder.net.{5 + i}"
            mapped[f"refine8.{i}"] = f"decoder.net.{1 + i}"
        own = self.state_dict()
        state = {}
        for name in own:
            for prefix, origin in mapped.items():
                if name.startswith(prefix + "."):
                    state[name] = weights[origin + name[len(prefix):]]
        for k in range(len(self.levels[0])):
            buffers = ECVQStage.state_from_codebook(weights[f"quantizer.stages.{k}.codebook"],
                                                    weights[f"quantizer.stages.{k}.ema_count"])
            state.update({f"levels.0.{k}.{name}": value for name, value in buffers.items()})
        self.load_state_dict({**own, **state})
        gdn = self.analysis["8"][1]
        gdn.beta_root.fill_(1.0)
        gdn.gamma_root.zero_()
        self.refine4.body[2].weight.zero_()
        self.refine4.body[2].bias.zero_()
        for level in range(1, len(self.levels)):
            self.silence_level(level)
