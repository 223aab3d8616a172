"""`vqcodec train` for hierarchical models: every phase, in order, resumable after a kill.

    config {"model": HierarchyConfig, "autoencoder": {loop, data}, "priors": {prior, loop, data}}
        │
        ├─ phase 1  autoencoder with the rate term  (training.hierarchy_task)  -> <work>/autoencoder/
        ├─ phase 2  integer priors over its indices  (training.hierarchy_prior_task) -> <work>/priors/
        v
    <out>.safetensors: the autoencoder's tensors + "prior<level>.*", both configs and the
    training records in its metadata: one file, one sha256

Each phase runs through the one loop (training.loop); a phase whose checkpoint has reached
its step count is done and is skipped, so rerunning the same command after a kill continues
where it stopped. Phase 2 starts over when phase 1's weights have changed since it began
(<work>/priors/source holds their sha256).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open

from ..config import HierarchyConfig, PriorConfig, from_dict
from .data import read_json_object
from .loop import LoopConfig, RunFiles, run, start_over_if_changed

PHASES = ("autoencoder", "priors")


def read_pipeline_config(path: str | Path) -> dict:
    data = read_json_object(path)
    unknown = set(data) - {"model", *PHASES}
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)} (expected model, {', '.join(PHASES)})")
    return {
        "model": from_dict(HierarchyConfig, data.get("model", {})),
        "autoencoder": (from_dict(LoopConfig, data.get("autoencoder", {}).get("loop", {})),
                        data.get("autoencoder", {}).get("data", {})),
        "priors": (from_dict(PriorConfig, data.get("priors", {}).get("prior", {})),
                   from_dict(LoopConfig, data.get("priors", {}).get("loop", {})),
                   data.get("priors", {}).get("data", {})),
    }


def work_folder(out: str | Path, work: str | Path | None = None) -> Path:
    """Where a run of several phases keeps its intermediate files: `work`, or by default <out>
    without its suffix plus ".work" (weights/x.safetensors -> weights/x.work)."""
    return Path(work) if work else Path(out).with_suffix(".work")


def train_pipeline(config_path: str | Path, folders: list[str], out: str | Path, *, name: str,
                   description: str, work: str | Path | None = None, progress: bool = True,
                   steps: int | None = None, init_from: str | Path | None = None, device: str = "cpu") -> Path:
    """Both phases of `config_path` on the images in `folders`, into `out`; intermediate files
    in work_folder(out, work). steps: every phase's step count (overrides the config).
    init_from: weights the autoencoder starts from (HierarchyTask.warm_start: a hierarchical
    model, or a VQ-VAE as its stride-8 level); ignored once phase 1 has a checkpoint. device:
    where both phases train ("cpu" or "cuda")."""
    from .hierarchy_prior_task import HierarchyPriorTask
    from .hierarchy_task import HierarchyTask

    cfg = read_pipeline_config(config_path)
    if steps is not None:
        cfg["autoencoder"] = (replace(cfg["autoencoder"][0], steps=steps), cfg["autoencoder"][1])
        cfg["priors"] = (cfg["priors"][0], replace(cfg["priors"][1], steps=steps), cfg["priors"][2])
    out = Path(out)
    work = work_folder(out, work)
    ae_loop, ae_data = cfg["autoencoder"]
    torch.manual_seed(ae_loop.seed)
    task = HierarchyTask(cfg["model"], folders, name=name, warm_start=init_from, device=device, **ae_data)
    run(task, ae_loop, work / "autoencoder", description=f"phase 1/{len(PHASES)}: autoencoder", progress=progress)
    prior_cfg, prior_loop, prior_data = cfg["priors"]
    start_over_if_changed(RunFiles.in_folder(work / "priors"), work / "autoencoder" / "weights.safetensors",
                          work / "priors" / "source")
    torch.manual_seed(prior_loop.seed)
    priors = HierarchyPriorTask(work / "autoencoder" / "weights.safetensors", folders, prior_cfg, device=device,
                                **prior_data)
    run(priors, prior_loop, work / "priors", description=f"phase 2/{len(PHASES)}: priors", progress=progress)
    assemble(work / "autoencoder" / "weights.safetensors", work / "priors" / "weights.safetensors", out,
             name=name, description=description, quality_ladder=cfg["model"].quality_ladder)
    return out


def assemble(autoencoder: Path, priors: Path, out: Path, *, name: str, description: str,
             quality_ladder: tuple | None = None) -> str:
    """One weights file (weights_io.save_hierarchy) from the two phases' outputs; its sha256.
    quality_ladder: the model's quality levels (HierarchyConfig.quality_ladder), chosen after
    training (benchmarks/quality_ladder.py); None keeps the autoencoder's."""
    from ..weights_io import save_hierarchy
    from .hierarchy_prior_task import load_hierarchy, read_level_priors

    model = load_hierarchy(autoencoder)
    if quality_ladder is not None:
        model.config = replace(model.config, quality_ladder=quality_ladder)
    with safe_open(str(autoencoder), "pt") as f:
        ae_training = json.loads(f.metadata()["training"])
    level_priors, prior_meta = read_level_priors(priors)
    training = {"autoencoder": ae_training, "priors": json.loads(prior_meta["training"])}
    return save_hierarchy(out, model, level_priors, name=name, description=description, training=training)
