"""The coding order: which positions of which stage each network pass codes, and what it may see."""
from __future__ import annotations

import functools

import torch

from ...config import PriorConfig

SCHEDULES = ("grouped", "raster")  # coding orders, see group_map
GROUP_CACHE_POSITIONS = 1 << 18  # grids up to this size keep their group maps (the same few recur in every image)


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


def pass_schedule(cfg: PriorConfig, num_stages: int, rows: int, cols: int):
    """The coding order: (stage, known (H, W), coded (H, W), far) for every non-empty pass."""
    for stage in range(num_stages):
        for known, coded, far in stage_passes(cfg, stage, rows, cols):
            yield stage, known, coded, far


def stage_passes(cfg: PriorConfig, stage: int, rows: int, cols: int):
    """The passes of one stage, in order: (known (H, W), coded (H, W), far)."""
    groups, order = (_remembered_groups if rows * cols <= GROUP_CACHE_POSITIONS else _groups)(cfg, stage, rows, cols)
    for g in order:
        yield groups < g, groups == g, far_pass(cfg, stage, g)


def _groups(cfg: PriorConfig, stage: int, rows: int, cols: int) -> tuple[torch.Tensor, list[int]]:
    groups = group_map(cfg, stage, rows, cols)
    return groups, torch.unique(groups).tolist()


_remembered_groups = functools.lru_cache(maxsize=64)(_groups)
