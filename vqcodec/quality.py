"""Quality levels: which stages of which layer a quality level codes. The one place this
arithmetic lives (codec, zoo and, through zoo's model info, bench and the CLI use it). No torch.

A model codes its layers in order: the base VQ-VAE, then, if it has one, an enhancement layer
(nn/enhance.py) over the base's level b. Quality 1..b keeps that many base stages; quality
b + n adds the enhancement layer's first n stages to base level b. b is the enhancement
layer's base_stages (0: all of the base's stages); without an enhancement layer, quality q
keeps q of the base's stages, up to all of them. A hierarchical model (nn/hierarchy.py) has one
layer per level, coarse to fine: quality q keeps the first q stages of the whole ladder, or as
many as its model's quality ladder says (HierarchyConfig.quality_ladder).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Levels:
    """A model's quality levels: layer i (in coding order) adds per_layer[i] of them."""

    per_layer: tuple[int, ...]
    # stages of the whole ladder that each quality level keeps (a hierarchical model's
    # HierarchyConfig.ladder); empty: quality q keeps q
    kept: tuple[int, ...] = ()

    @property
    def count(self) -> int:
        """The highest quality level (levels are 1..count)."""
        return len(self.kept) or sum(self.per_layer)

    @property
    def base(self) -> int:
        """The base level: the highest quality level of the base model alone, which the
        enhancement layer, if any, builds on."""
        return self.per_layer[0]

    def stages(self, quality: int) -> tuple[int, ...]:
        """The stages of each layer that quality level `quality` codes, for as many layers as
        it reaches: each layer filled up to its levels before the next one starts."""
        if not 1 <= quality <= self.count:
            raise ValueError(f"quality {quality} is not one of the levels 1..{self.count}")
        stages, remaining = [], self.kept[quality - 1] if self.kept else quality
        for levels in self.per_layer:
            stages.append(min(remaining, levels))
            remaining -= stages[-1]
            if not remaining:
                break
        return tuple(stages)


def levels(num_stages: int, enhance_stages: int = 0, base_stages: int = 0) -> Levels:
    """The quality levels of a base model with num_stages residual stages and an enhancement
    layer of enhance_stages stages (0: none) over the base's level base_stages (0: its top)."""
    if not enhance_stages:
        return Levels((num_stages,))
    base = base_stages or num_stages
    if not 1 <= base <= num_stages:
        raise ValueError(f"base_stages must be from 1 to the base model's {num_stages} stages")
    return Levels((base, enhance_stages))


def default_quality(num_stages: int) -> int:
    """The level used when none is asked for: half of the base model's stages (a hierarchical
    model's: all its stages), rounded up."""
    return (num_stages + 1) // 2
