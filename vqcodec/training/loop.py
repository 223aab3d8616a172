"""The one training loop: every phase of every model trains through `run`.

    task.batch_loss(step, generator) ──> loss ──backward, clip, Adam──> parameters
       │ warm-up + cosine learning rate; bf16 autocast on CUDA and where the CPU has native bf16
       │ every checkpoint_every steps: task.save_weights(<dir>/weights.safetensors), then
       │   <dir>/checkpoint.pt (model, optimizer, random states, step, log); a kill loses at most
       │   that much, and the resumed run ends with the weights of an uninterrupted one
       │ every eval_every steps: task.evaluate() appended to <dir>/log.jsonl (and to the record)
       │ divergence (recent loss far above its long-run mean, or non-finite): back to the last
       v   checkpoint with half the learning rate
    resumed from <dir>/checkpoint.pt when it exists

The files can also be named one by one (RunFiles: a checkpoint next to a weights file, say),
and a task whose weights file may be its own input writes it only at the end. Under torchrun
(torch.distributed initialised, see setup_distributed) every process runs the loop with its
own random crops; the task's forward pass syncs gradients (DistributedDataParallel), the
divergence test sees the loss averaged over processes, and process 0 alone evaluates and
writes files (the checkpoint holds every process's generator).

A task owns its model, data and metrics; this module knows none of them (the split of
nanoGPT's train.py: one loop, one checkpoint dict).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..cpu import has_native_bf16
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
    bf16: bool = True  # bf16 autocast on CUDA, and on CPUs with native bf16 (AVX512-BF16 / AMX)
    # roll back to the last checkpoint and halve the learning rate when the mean loss of the
    # last 20 steps exceeds spike_factor times its long-run mean; 0 disables it
    spike_factor: float = 3.0
    # end the run at this step of its schedule (0: at `steps`): a run cut short, whose learning
    # rate followed the schedule of `steps` up to there (a recipe that reproduces such a run)
    stop_at: int = 0

    @property
    def last_step(self) -> int:
        """The step the run ends at."""
        return min(self.stop_at, self.steps) if self.stop_at > 0 else self.steps

    @classmethod
    def of(cls, config, **rest) -> "LoopConfig":
        """The loop settings of a phase's own train config (TrainConfig, PriorTrainConfig): its
        fields of the same names, and `rest` for those it does not have."""
        names = {f.name for f in fields(cls)}
        own = {f.name: getattr(config, f.name) for f in fields(config) if f.name in names}
        if set(own) & set(rest):
            raise ValueError(f"{type(config).__name__} already sets {sorted(set(own) & set(rest))}")
        return cls(**own, **rest)


class Task(Protocol):
    model: torch.nn.Module
    # optional: checkpoint_key (a JSON-able dict: a checkpoint made with another one is refused)
    # and summary(entry) -> dict (what the progress line shows of an evaluation)

    def batch_loss(self, step: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]: ...
    def evaluate(self) -> dict: ...
    def save_weights(self, path: Path, record: dict) -> None: ...


@dataclass(frozen=True)
class RunFiles:
    """Where a run keeps its files. weights_at_checkpoints False: the weights are written once,
    at the end (for a task whose output may replace its own input)."""

    checkpoint: Path
    log: Path
    weights: Path
    weights_at_checkpoints: bool = True
    resume: Path | None = None  # a checkpoint to start from instead of `checkpoint`

    @classmethod
    def in_folder(cls, folder: str | Path) -> "RunFiles":
        folder = Path(folder)
        return cls(folder / "checkpoint.pt", folder / "log.jsonl", folder / "weights.safetensors")

    @classmethod
    def beside(cls, out: str | Path, tag: str = "", **options) -> "RunFiles":
        """<out> with <out>.<tag>ckpt and <out>.<tag>log.jsonl next to it (tag "" or "prior.", ...)."""
        out = Path(out)
        return cls(out.with_suffix(f".{tag}ckpt"), out.with_suffix(f".{tag}log.jsonl"), out, **options)


def finished(files: RunFiles, cfg: LoopConfig, key: dict | None = None) -> bool:
    """Whether the run in `files` is done: its weights exist and its checkpoint has reached
    cfg.last_step (made with task checkpoint_key `key`, when given). A phase so done is skipped."""
    if not (files.weights.exists() and files.checkpoint.exists()):
        return False
    blob = torch.load(files.checkpoint, map_location="cpu", weights_only=True)
    state = blob.get("state") if isinstance(blob, dict) else None
    return (state is not None and state["step"] >= cfg.last_step
            and (key is None or blob.get("task", key) == key))


def start_over_if_changed(files: RunFiles, source: Path, marker: Path) -> None:
    """For a phase that trains on an earlier phase's output `source`: unless `marker` holds
    source's sha256 (the run began from this very file), the run's checkpoint and log go, so it
    starts over, and `marker` records the sha256."""
    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    if (marker.read_text().strip() if marker.exists() else None) != digest:
        for stale in (files.checkpoint, files.log):
            stale.unlink(missing_ok=True)
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(marker, (digest + "\n").encode())


def setup(cfg: LoopConfig) -> None:
    """Before a task is built: torch's thread count, and its global seed (model initialisation)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)


def setup_distributed(device: str) -> tuple[int, int]:
    """Under torchrun (WORLD_SIZE > 1) join the process group; returns (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def is_main_process() -> bool:
    """True except in the non-zero ranks of a torchrun launch (RANK is set by torchrun)."""
    return int(os.environ.get("RANK", "0")) == 0


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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


def run(task: Task, cfg: LoopConfig, where: str | Path | RunFiles, *, description: str = "training",
        progress: bool = True) -> dict:
    """Train `task` for cfg.last_step steps, its files in folder `where` (created) or as RunFiles
    name them, resuming from its checkpoint. Returns the last evaluation."""
    files = where if isinstance(where, RunFiles) else RunFiles.in_folder(where)
    files.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world = _rank_and_world()
    main = rank == 0
    model = task.model
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(cfg.seed + 1000 * rank)
    device_type = next(model.parameters()).device.type
    bf16 = cfg.bf16 and (device_type == "cuda" or has_native_bf16())
    key = getattr(task, "checkpoint_key", None)
    state = {"step": 0, "elapsed": 0.0, "lr_scale": 1.0, "rollbacks": [], "last_eval": {}, "log": []}

    def load(blob: dict, origin: Path) -> None:
        if "state" not in blob:
            raise ValueError(f"{origin} is a checkpoint of an older vqcodec trainer, which cannot be "
                             "resumed: delete it to start over")
        if key is not None and blob.get("task", key) != key:
            raise ValueError(f"{origin} was made with another configuration; pass the same --config, "
                             "or delete it to start over")
        model.load_state_dict(blob["model"])
        optimizer.load_state_dict(blob["optimizer"])
        for name, set_state in (("generator", generator.set_state), ("torch_rng", torch.set_rng_state)):
            if name in blob:  # a list per process under torchrun
                states = blob.get(name + "s", [blob[name]])
                set_state(states[rank] if rank < len(states) else states[0])
        state.update(blob["state"])

    def save() -> bytes:
        # the task's generator, and torch's global one (k-means seeds, dead-code restarts)
        blob = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                "loop_config": asdict(cfg)}
        for name, mine in (("generator", generator.get_state()), ("torch_rng", torch.get_rng_state())):
            states = [mine]
            if world > 1:
                states = [torch.empty_like(mine) for _ in range(world)]
                dist.all_gather(states, mine)
                blob[name + "s"] = states
            blob[name] = states[0]
        if key is not None:
            blob["task"] = key
        buffer = io.BytesIO()
        torch.save(blob, buffer)
        data = buffer.getvalue()
        if main:
            if files.weights_at_checkpoints:
                task.save_weights(files.weights, record())
            atomic_write_bytes(files.checkpoint, data)
        return data

    def record() -> dict:
        return {"steps": state["step"], "wall_seconds": round(state["elapsed"], 1), "bf16": bf16,
                "lr_scale": state["lr_scale"], "rollbacks": state["rollbacks"], "loop": asdict(cfg),
                "last_eval": state["last_eval"], "log": state["log"]}

    def restore(data: bytes, origin: Path) -> None:
        load(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), origin)

    start = files.resume or files.checkpoint
    if start.exists():
        restore(start.read_bytes(), start)
    last_good = save() if state["step"] == 0 or start != files.checkpoint else files.checkpoint.read_bytes()
    guard = SpikeGuard(cfg.spike_factor)
    bar = tqdm(total=cfg.last_step, initial=state["step"], disable=not progress or not main, dynamic_ncols=True,
               desc=description)
    model.train()
    while state["step"] < cfg.last_step:
        started = time.perf_counter()
        step = state["step"]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg) * state["lr_scale"]
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            loss, scalars = task.batch_loss(step, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if torch.isfinite(loss) and torch.isfinite(grad_norm):
            optimizer.step()
        if guard.diverging(_mean_over_ranks(loss.detach(), world)):
            at = step
            restore(last_good, files.checkpoint)
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
        if main and (step % cfg.eval_every == 0 or step == cfg.last_step):
            model.eval()
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                state["last_eval"] = task.evaluate()
            model.train()
            entry = {"step": step, "wall_seconds": round(state["elapsed"], 1), **state["last_eval"]}
            state["log"].append(entry)
            with open(files.log, "a") as f:
                f.write(json.dumps(entry) + "\n")
            summary = getattr(task, "summary", None)
            bar.write(json.dumps(summary(entry) if summary else entry))
        if step % cfg.checkpoint_every == 0 or step == cfg.last_step:
            last_good = save()
    bar.close()
    if main and not files.weights_at_checkpoints:
        task.save_weights(files.weights, record())
    return state["last_eval"]


def _mean_over_ranks(value: torch.Tensor, world: int) -> float:
    """The loss averaged over all processes, so every process makes the same rollback decision."""
    if world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world
    return value.item()
