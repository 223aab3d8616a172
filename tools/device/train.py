"""Train a hierarchical model on a lent GPU (the `device` tool): its autoencoder, then its level
priors, each phase until a wall-clock deadline; the step counts come from a timed trial of a
few passes on a copy of the model, so the phases end when the lease allows.

    PYTHONPATH=$PWD python3 tools/device/train.py TAG MODEL_JSON AE_JSON PRIOR_JSON T0 AE_UNTIL END_AT OUTDIR [WARM [PRIOR_WARM]]

MODEL_JSON: HierarchyConfig fields; AE_JSON / PRIOR_JSON: {"loop": {...}, "data": {...}} (and
"prior" in PRIOR_JSON; '{}' skips the priors); T0: the epoch second the device command began;
the autoencoder trains until T0 + AE_UNTIL, the priors until T0 + END_AT; WARM: weights to
start from (HierarchyTask.warm_start); PRIOR_WARM: level priors to continue
(HierarchyPriorTask's warm_start). Weights go to OUTDIR/TAG.ae.safetensors (as two
.partN files above 15 MB, the device's limit per returned file) at every checkpoint, and to
OUTDIR/TAG.priors.safetensors; both phases log to OUTDIR/TAG.log.jsonl. EVALS (environment,
default 3): held-out evaluations of the autoencoder; VQ_DATA: the photo folder packed by
tools/device/pack_photos.py (default .gpu/data); VQ_DEVICE=cpu tries the script here.

Session 10 (docs/EXPERIMENTS.md): run ONE such process at a time. Alone it ran 47 ms/step at
batch 32 x 256x256 on an H200; two at once ran 211-527 ms/step each with the GPU mostly idle.
Session 16: i1's model (two levels, FiLM) ran 51-70 ms/step at that batch, the GPU 50-60 %
busy; the photos and the tree that travels fit the 64 MiB cap only with the committed weights
files the run does not read kept out of it for the call (`git rm --cached` and listed in
.git/info/exclude; then `git reset` them back and drop those lines).
"""
import copy
import json
import os
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

try:
    import zstandard  # noqa: F401  (vqcodec.images codes alpha planes with it; training never does)
except ImportError:  # the device machine has no zstandard, and its tree has no room for the wheel
    import types
    sys.modules["zstandard"] = types.ModuleType("zstandard")

from vqcodec.config import HierarchyConfig, PriorConfig, from_dict
from vqcodec.training.hierarchy_prior_task import HierarchyPriorTask
from vqcodec.training.hierarchy_task import HierarchyTask
from vqcodec.training.loop import LoopConfig, RunFiles, run, setup

DATA = os.environ.get("VQ_DATA", ".gpu/data")
FOLDERS = [f"{DATA}/photos", f"{DATA}/photos2"]
DEVICE = os.environ.get("VQ_DEVICE", "cuda")  # cpu: the trial of this script here
PART_LIMIT = 15_000_000  # bytes: the most the device returns per file


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed_steps(task, tag: str, seconds: float, trial: int = 12) -> int:
    """Training steps of the task that fit in `seconds`, from `trial` forward/backward passes of a
    copy of the task's model (the first 3 not counted: warm-up)."""
    original = task.model
    task.model = copy.deepcopy(original)
    generator = torch.Generator().manual_seed(12345)
    times = []
    try:
        for i in range(trial):
            synchronize()
            start = time.perf_counter()
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                loss, _ = task.batch_loss(i, generator)
            loss.backward()
            synchronize()
            times.append(time.perf_counter() - start)
    finally:
        task.model = original
    per_step = sum(times[3:]) / len(times[3:]) * 1.12  # + optimizer step, checkpoints, evaluations
    steps = max(50, int(seconds / per_step))
    print(f"[{tag}] {per_step * 1000:.0f} ms/step -> {steps} steps in {seconds:.0f} s", flush=True)
    return steps


def split_save(full: Path, out_stem: Path) -> None:
    """Copy the weights file `full` to out_stem.safetensors, or, when larger than PART_LIMIT,
    to out_stem.part0/1.safetensors (keys split in two halves by size, metadata in both)."""
    from safetensors import safe_open

    with safe_open(str(full), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(full))
    if full.stat().st_size <= PART_LIMIT:
        save_file(tensors, str(out_stem) + ".safetensors", metadata=metadata)
        return
    parts, sizes = [{}, {}], [0, 0]
    for name in sorted(tensors, key=lambda k: -tensors[k].numel()):
        i = 0 if sizes[0] <= sizes[1] else 1
        parts[i][name] = tensors[name]
        sizes[i] += tensors[name].numel()
    for i, part in enumerate(parts):
        save_file(part, f"{out_stem}.part{i}.safetensors", metadata=metadata)


def main() -> None:
    tag = sys.argv[1]
    model_cfg = from_dict(HierarchyConfig, json.loads(sys.argv[2]))
    ae = json.loads(sys.argv[3])
    prior = json.loads(sys.argv[4])
    t0, ae_until, end_at = float(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])
    out = Path(sys.argv[8])
    warm = sys.argv[9] if len(sys.argv) > 9 else None
    prior_warm = sys.argv[10] if len(sys.argv) > 10 else None
    work = Path("/tmp/gpu_runs") / tag
    work.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    log = out / f"{tag}.log.jsonl"

    loop_cfg = from_dict(LoopConfig, ae["loop"])
    setup(loop_cfg)
    task = HierarchyTask(model_cfg, FOLDERS, warm_start=warm, device=DEVICE, name=f"gpu_{tag}", **ae["data"])
    print(f"[{tag}] autoencoder ready at {time.time() - t0:.0f} s", flush=True)
    steps = timed_steps(task, tag, t0 + ae_until - time.time())
    loop_cfg = replace(loop_cfg, steps=steps, eval_every=max(1, steps // int(os.environ.get("EVALS", "3"))))
    full = work / "ae.safetensors"

    original_save = task.save_weights

    def save_weights(path: Path, record: dict) -> None:
        original_save(path, record)
        split_save(path, out / f"{tag}.ae")

    task.save_weights = save_weights
    files = RunFiles(work / "ae.ckpt", log, full)
    run(task, loop_cfg, files, description=f"{tag} autoencoder", progress=False)
    print(f"[{tag}] autoencoder done at {time.time() - t0:.0f} s", flush=True)
    del task
    if DEVICE == "cuda":
        torch.cuda.empty_cache()

    if not prior:
        return
    try:
        prior_cfg = from_dict(PriorConfig, prior["prior"])
        prior_loop = from_dict(LoopConfig, prior["loop"])
        setup(prior_loop)
        priors = HierarchyPriorTask(full, FOLDERS, prior_cfg, device=DEVICE, warm_start=prior_warm, **prior["data"])
        steps = timed_steps(priors, tag, t0 + end_at - time.time())
        prior_loop = replace(prior_loop, steps=steps, eval_every=steps)
        run(priors, prior_loop, RunFiles(work / "priors.ckpt", log, out / f"{tag}.priors.safetensors"),
            description=f"{tag} priors", progress=False)
        print(f"[{tag}] priors done at {time.time() - t0:.0f} s", flush=True)
    except Exception:
        traceback.print_exc()


if __name__ == "__main__":
    main()
