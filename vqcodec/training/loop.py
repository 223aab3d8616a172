"""The one training loop: every phase of every model trains through `run`.

    task.batch_loss(step, generator) ──> loss ──backward, clip, Adam──> parameters
       │ warm-up + cosine learning rate; bf16 autocast where the CPU has native bf16
       │ every checkpoint_every steps: <dir>/checkpoint.pt (model, optimizer, generator, step)
       │   and task.save_weights(<dir>/weights.safetensors); a kill loses at most that much
       │ every eval_every steps: task.evaluate() appended to <dir>/log.jsonl
       │ divergence (recent loss far above its long-run mean, or non-finite): back to the last
       v   checkpoint with half the learning rate
    resumed from <dir>/checkpoint.pt when it exists

A task owns its model, data and metrics; this module knows none of them (the split of
nanoGPT's train.py: one loop, one checkpoint dict).
"""
from __future__ import annotations

import io
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm

from ..fileio import atomic_write_bytes


@dataclass(frozen=True)
class LoopConfig:
    steps: int = 20000
    learning_rate: float = 1e-4
    warmup_steps: int = 200
    lr_final_fraction: float = 0.1  # cosine decay to this fraction of the peak
    grad_clip: float = 1.0  # max global gradient norm; steps with a non-finite loss are skipped
    checkpoint_every: int = 250
    eval_every: int = 1000
    seed: int = 0
    threads: int = 0  # torch threads; 0 = torch's default
    bf16: bool = True  # bf16 autocast on CPUs with native bf16 (AVX512-BF16 / AMX)
    # roll back to the last checkpoint and halve the learning rate when the mean loss of the
    # last 20 steps exceeds spike_factor times its long-run mean; 0 disables it
    spike_factor: float = 3.0


class Task(Protocol):
    model: torch.nn.Module

    def batch_loss(self, step: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]: ...
    def evaluate(self) -> dict: ...
    def save_weights(self, path: Path, record: dict) -> None: ...


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def learning_rate(step: int, cfg: LoopConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    floor = cfg.lr_final_fraction
    return cfg.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class SpikeGuard:
    """Divergence: the recent mean loss far above the long-run mean (or non-finite)."""

    def __init__(self, factor: float, recent: int = 20, long: int = 500):
        self.factor = factor
        self.recent_decay, self.long_decay = 1 - 1 / recent, 1 - 1 / long
        self.reset()

    def reset(self) -> None:
        self.recent = self.long = None
        self.seen = 0

    def diverging(self, loss: float) -> bool:
        if not self.factor:
            return False
        if not math.isfinite(loss):
            return True
        self.seen += 1
        if self.recent is None:
            self.recent = self.long = loss
            return False
        self.recent = self.recent_decay * self.recent + (1 - self.recent_decay) * loss
        self.long = self.long_decay * self.long + (1 - self.long_decay) * loss
        return self.seen > 100 and self.recent > self.factor * self.long


def run(task: Task, cfg: LoopConfig, folder: str | Path, *, description: str = "training",
        progress: bool = True) -> dict:
    """Train `task` for cfg.steps steps in `folder` (created), resuming from its checkpoint.
    Returns the last evaluation."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint_path, log_path = folder / "checkpoint.pt", folder / "log.jsonl"
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = task.model
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(cfg.seed)
    bf16 = cfg.bf16 and cpu_has_native_bf16()
    state = {"step": 0, "elapsed": 0.0, "lr_scale": 1.0, "rollbacks": [], "last_eval": {}}

    def load(blob: dict) -> None:
        model.load_state_dict(blob["model"])
        optimizer.load_state_dict(blob["optimizer"])
        generator.set_state(blob["generator"])
        state.update(blob["state"])

    def save() -> bytes:
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(), "state": state, "loop_config": asdict(cfg)}, buffer)
        data = buffer.getvalue()
        atomic_write_bytes(checkpoint_path, data)
        task.save_weights(folder / "weights.safetensors", record())
        return data

    def record() -> dict:
        return {"steps": state["step"], "wall_seconds": round(state["elapsed"], 1), "bf16": bf16,
                "lr_scale": state["lr_scale"], "rollbacks": state["rollbacks"], "loop": asdict(cfg),
                "last_eval": state["last_eval"]}

    if checkpoint_path.exists():
        load(torch.load(checkpoint_path, weights_only=True))
    last_good = save() if state["step"] == 0 else checkpoint_path.read_bytes()
    guard = SpikeGuard(cfg.spike_factor)
    bar = tqdm(total=cfg.steps, initial=state["step"], disable=not progress, dynamic_ncols=True, desc=description)
    model.train()
    while state["step"] < cfg.steps:
        started = time.perf_counter()
        step = state["step"]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg) * state["lr_scale"]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, scalars = task.batch_loss(step, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if torch.isfinite(loss) and torch.isfinite(grad_norm):
            optimizer.step()
        if guard.diverging(loss.item()):
            at = step
            load(torch.load(io.BytesIO(last_good), weights_only=True))
            state["lr_scale"] /= 2
            state["rollbacks"].append({"at_step": at, "back_to": state["step"]})
            guard.reset()
            bar.write(f"loss diverging at step {at}: back to step {state['step']}, "
                      f"learning rate x{state['lr_scale']:g}")
            bar.n = state["step"]
            bar.refresh()
            continue
        state["step"] += 1
        state["elapsed"] += time.perf_counter() - started
        bar.update(1)
        bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items()})
        step = state["step"]
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                state["last_eval"] = task.evaluate()
            model.train()
            entry = {"step": step, "wall_seconds": round(state["elapsed"], 1), **state["last_eval"]}
            with open(log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")
            bar.write(json.dumps(entry))
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            last_good = save()
    bar.close()
    return state["last_eval"]
