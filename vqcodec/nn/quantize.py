"""Residual vector quantization with EMA codebooks.

    z ──> [stage 1] ──r1=z-q1──> [stage 2] ──r2──> ... ──> [stage S]
            │ i1, q1               │ i2, q2                  │ iS, qS
            v                      v                         v
    z_q(n) = q1 + q2 + ... + qn    (any prefix n of the stages decodes)

Ideas and their sources:
- EMA codebook updates: van den Oord et al. 2017, "Neural Discrete Representation
  Learning", appendix A.1.
- Residual VQ trained with quantizer dropout, so that every prefix of stages is a
  usable rate: Zeghidour et al. 2021, "SoundStream".
- k-means initialisation from data and restart of dead codes with data vectors:
  Dhariwal et al. 2020, "Jukebox"; Zeghidour et al. 2021.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(tensor)
    return tensor


def _broadcast(tensor: torch.Tensor) -> torch.Tensor:
    """Make every rank hold rank 0's tensor (codebook edits must agree under DDP)."""
    if _distributed():
        dist.broadcast(tensor, 0)
    return tensor


def kmeans(vectors: torch.Tensor, k: int, iterations: int = 10) -> torch.Tensor:
    """Plain Lloyd k-means, seeded with k random data vectors; returns k centroids."""
    n = vectors.shape[0]
    centroids = vectors[torch.randint(n, (k,), device=vectors.device)].clone()
    for _ in range(iterations):
        assign = torch.cdist(vectors, centroids).argmin(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, vectors)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1).to(vectors.dtype)
        filled = counts.squeeze(1) > 0
        centroids[filled] = sums[filled] / counts[filled]
    return centroids


class VectorQuantizer(nn.Module):
    """One codebook of K vectors of dimension D, learned by EMA rather than by gradients."""

    def __init__(self, codebook_size: int, dim: int, decay: float = 0.99,
                 dead_code_threshold: float = 1.0, epsilon: float = 1e-5):
        super().__init__()
        self.codebook_size = codebook_size
        self.decay = decay
        self.dead_code_threshold = dead_code_threshold
        self.epsilon = epsilon
        self.register_buffer("codebook", torch.randn(codebook_size, dim) * 0.01)
        self.register_buffer("ema_count", torch.ones(codebook_size))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def nearest(self, vectors: torch.Tensor) -> torch.Tensor:
        """Index of the closest codebook entry for each row of `vectors` (N, D)."""
        distances = (
            vectors.pow(2).sum(1, keepdim=True)
            - 2 * vectors @ self.codebook.t()
            + self.codebook.pow(2).sum(1)
        )
        return distances.argmin(dim=1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return F.embedding(indices, self.codebook)

    @torch.no_grad()
    def initialize(self, vectors: torch.Tensor) -> None:
        centroids = _broadcast(kmeans(vectors, self.codebook_size))
        self.codebook.copy_(centroids)
        self.ema_sum.copy_(centroids)
        self.ema_count.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def update(self, vectors: torch.Tensor, indices: torch.Tensor) -> None:
        """EMA step towards the mean of the vectors assigned to each code, then
        restart codes whose EMA usage fell below the threshold."""
        counts = torch.bincount(indices, minlength=self.codebook_size).to(vectors.dtype)
        sums = torch.zeros_like(self.ema_sum).index_add_(0, indices, vectors)
        _all_reduce_sum(counts)
        _all_reduce_sum(sums)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.epsilon) / (total + self.codebook_size * self.epsilon) * total
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))
        self.restart_dead_codes(vectors)

    @torch.no_grad()
    def restart_dead_codes(self, vectors: torch.Tensor) -> None:
        dead = self.ema_count < self.dead_code_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        picks = vectors[torch.randint(vectors.shape[0], (n_dead,), device=vectors.device)]
        replacement = self.codebook.clone()
        replacement[dead] = picks
        replacement = _broadcast(replacement)
        self.codebook.copy_(replacement)
        self.ema_sum[dead] = replacement[dead] * self.dead_code_threshold
        self.ema_count[dead] = self.dead_code_threshold


class ResidualVQ(nn.Module):
    """S codebooks applied one after another to the remaining residual."""

    def __init__(self, num_stages: int, codebook_size: int, dim: int,
                 decay: float = 0.99, dead_code_threshold: float = 1.0):
        super().__init__()
        self.stages = nn.ModuleList(
            VectorQuantizer(codebook_size, dim, decay, dead_code_threshold) for _ in range(num_stages)
        )

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def forward(self, z: torch.Tensor, keep_stages: torch.Tensor | None = None):
        """Quantize latents z (B, D, H, W).

        keep_stages (B,) says how many stages each example keeps (quantizer dropout);
        None keeps all. Returns (z_q with straight-through gradients, indices (B, S, H, W),
        commitment loss summed over stages)."""
        b, d, h, w = z.shape
        residual = z.permute(0, 2, 3, 1).reshape(-1, d)
        partial_sums, all_indices = [], []
        total = torch.zeros_like(residual)
        commitment = z.new_zeros(())
        for vq in self.stages:
            if self.training and not bool(vq.initialized):
                vq.initialize(residual.detach())
            indices = vq.nearest(residual.detach())
            if self.training:
                vq.update(residual.detach(), indices)
            quantized = vq.lookup(indices)
            commitment = commitment + F.mse_loss(residual, quantized.detach())
            residual = residual - quantized.detach()
            total = total + quantized
            partial_sums.append(total)
            all_indices.append(indices.view(b, h, w))
        stacked = torch.stack(partial_sums)  # (S, B*H*W, D)
        if keep_stages is None:
            chosen = stacked[-1]
        else:
            per_position = keep_stages.repeat_interleave(h * w) - 1  # (B*H*W,)
            chosen = stacked.gather(0, per_position.view(1, -1, 1).expand(1, -1, d))[0]
        z_flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        z_q = z_flat + (chosen - z_flat).detach()
        z_q = z_q.view(b, h, w, d).permute(0, 3, 1, 2)
        return z_q, torch.stack(all_indices, dim=1), commitment

    @torch.no_grad()
    def quantize(self, z: torch.Tensor, num_stages: int) -> torch.Tensor:
        """Indices (B, num_stages, H, W) of the first num_stages stages."""
        b, d, h, w = z.shape
        residual = z.permute(0, 2, 3, 1).reshape(-1, d)
        out = []
        for vq in self.stages[:num_stages]:
            indices = vq.nearest(residual)
            residual = residual - vq.lookup(indices)
            out.append(indices.view(b, h, w))
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        """Latents (B, D, H, W) from indices (B, n, H, W) of the first n stages."""
        total = None
        for stage, vq in enumerate(self.stages[: indices.shape[1]]):
            q = vq.lookup(indices[:, stage])
            total = q if total is None else total + q
        return total.permute(0, 3, 1, 2).contiguous()
