"""`vqcodec train` for hierarchical models: every phase, in order, resumable after a kill.

    config {"model": HierarchyConfig, "autoencoder": {loop, data}, "priors": {prior, loop, data},
            "rounds": [{"model": ..., "autoencoder": ..., "priors": ..., "note": "..."}, ...]}
        │
        ├─ round 0   autoencoder with the rate term (training.hierarchy_task) -> <work>/autoencoder/
        │            integer priors over its indices (training.hierarchy_prior_task) -> <work>/priors/
        ├─ round 1   the autoencoder trained on from round 0's, the priors continued from round 0's
        │   ...      on it -> <work>/round1/autoencoder/, <work>/round1/priors/
        v
    <out>.safetensors: the last round's autoencoder tensors + "prior<level>.*", both configs and
    every round's training records in its metadata: one file, one sha256

A round after the first states only what changes: its sections are the round before's with the
keys it gives replaced (a longer run at another batch size, a higher lambda_high, one more
level), so the recipe of a model trained in several sittings is one config. A round whose
priors loop has 0 steps trains no priors (the next priors phase continues the last ones
trained, or starts fresh); a later round whose autoencoder loop has 0 steps keeps the
autoencoder of the round before (a round that refits the priors alone, say on the codec's own
grids: priors data {"codec_grids": true}, with the round's encoder settings); a loop's stop_at
ends a run cut short on its schedule.

Each phase runs through the one loop (training.loop); a phase whose checkpoint has reached
its step count is done and is skipped, so rerunning the same command after a kill continues
where it stopped. A phase starts over when a file it starts from has changed since it began
(its folder's source* files hold their sha256).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open

from ..config import HierarchyConfig, PriorConfig, from_dict
from .data import read_json_object
from .loop import LoopConfig, RunFiles, run, start_over_if_changed

PHASES = ("autoencoder", "priors")
SECTIONS = ("model", *PHASES, "rounds")


@dataclass(frozen=True)
class Round:
    """One round of the pipeline: the autoencoder phase, then the priors phase."""
    model: HierarchyConfig
    autoencoder: tuple[LoopConfig, dict]  # loop, data
    priors: tuple[PriorConfig, LoopConfig, dict]  # prior, loop, data

    @property
    def trains_autoencoder(self) -> bool:
        """A later round whose autoencoder loop has 0 steps keeps the one before (the first
        round always trains one)."""
        return self.autoencoder[0].steps > 0

    @property
    def trains_priors(self) -> bool:
        """A round whose priors loop has 0 steps leaves them out (a round whose autoencoder is
        only a step on the way); the next priors phase continues the last priors trained."""
        return self.priors[1].steps > 0


def _updated(base: dict, changes: dict, where: str) -> dict:
    """base with the keys that changes gives replaced, at any depth (a round that gives
    {"autoencoder": {"loop": {"steps": 4}}} keeps every other loop setting)."""
    if not isinstance(changes, dict):
        raise ValueError(f"{where}: expected a JSON object")
    out = dict(base)
    for key, value in changes.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = _updated(base[key], value, f"{where}.{key}") if nested else value
    return out


def read_pipeline_config(path: str | Path) -> list[Round]:
    """The rounds of a pipeline config (see the module docstring), first to last."""
    data = read_json_object(path)
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)} (expected {', '.join(SECTIONS)})")
    raw = {key: data.get(key, {}) for key in ("model", *PHASES)}
    later = data.get("rounds", [])
    if not isinstance(later, list):
        raise ValueError(f"{path}: 'rounds' must be a list of rounds")
    rounds = []
    for number, changes in enumerate([{}] + later):
        where = f"{path}: round {number}"
        unknown = set(changes) - {"model", *PHASES, "note"}
        if unknown:
            raise ValueError(f"{where}: unknown sections {sorted(unknown)} (expected model, {', '.join(PHASES)}, note)")
        raw = _updated(raw, {k: v for k, v in changes.items() if k != "note"}, where)
        ae, priors = raw["autoencoder"], raw["priors"]
        rounds.append(Round(from_dict(HierarchyConfig, raw["model"]),
                            (from_dict(LoopConfig, ae.get("loop", {})), ae.get("data", {})),
                            (from_dict(PriorConfig, priors.get("prior", {})), from_dict(LoopConfig, priors.get("loop", {})),
                             priors.get("data", {}))))
    if not rounds[-1].trains_priors:
        raise ValueError(f"{path}: the last round must train priors (its priors loop has 0 steps)")
    if not rounds[0].trains_autoencoder:
        raise ValueError(f"{path}: the first round must train the autoencoder (its loop has 0 steps)")
    return rounds


def work_folder(out: str | Path, work: str | Path | None = None) -> Path:
    """Where a run of several phases keeps its intermediate files: `work`, or by default <out>
    without its suffix plus ".work" (weights/x.safetensors -> weights/x.work)."""
    return Path(work) if work else Path(out).with_suffix(".work")


def round_folder(work: Path, number: int) -> Path:
    """Round 0's phases keep their folders in `work` itself, later rounds in work/round<n>."""
    return work if number == 0 else work / f"round{number}"


def train_pipeline(config_path: str | Path, folders: list[str], out: str | Path, *, name: str,
                   description: str, work: str | Path | None = None, progress: bool = True,
                   steps: int | None = None, init_from: str | Path | None = None, device: str = "cpu") -> Path:
    """Every round of `config_path` on the images in `folders`, into `out`; intermediate files
    in work_folder(out, work). steps: every phase's step count (overrides the config; a
    phase a round leaves out stays out).
    init_from: weights the first autoencoder starts from (HierarchyTask.warm_start: a
    hierarchical model, or a VQ-VAE as its stride-8 level); ignored once it has a checkpoint.
    device: where every phase trains ("cpu" or "cuda")."""
    from .hierarchy_prior_task import HierarchyPriorTask
    from .hierarchy_task import HierarchyTask

    rounds = read_pipeline_config(config_path)
    if steps is not None:  # phases a round leaves out stay out
        rounds = [replace(r, autoencoder=(replace(r.autoencoder[0], steps=steps if r.trains_autoencoder else 0),
                                          r.autoencoder[1]),
                          priors=(r.priors[0], replace(r.priors[1], steps=steps if r.trains_priors else 0),
                                  r.priors[2])) for r in rounds]
    out = Path(out)
    work = work_folder(out, work)
    phases = [(number, "autoencoder") for number, r in enumerate(rounds) if r.trains_autoencoder]
    phases += [(number, "priors") for number, r in enumerate(rounds) if r.trains_priors]
    phases.sort()
    autoencoder, priors = init_from, None  # what the next phase of each kind starts from
    records = []
    for number, spec in enumerate(rounds):
        folder = round_folder(work, number)

        def title(kind: str) -> str:
            round_name = f" (round {number})" if len(rounds) > 1 else ""
            return f"phase {phases.index((number, kind)) + 1}/{len(phases)}: {kind}{round_name}"
        ae_loop, ae_data = spec.autoencoder
        if spec.trains_autoencoder:
            if number > 0:
                start_over_if_changed(RunFiles.in_folder(folder / "autoencoder"), autoencoder,
                                      folder / "autoencoder" / "source")
            torch.manual_seed(ae_loop.seed)
            task = HierarchyTask(spec.model, folders, name=name, warm_start=autoencoder, device=device, **ae_data)
            run(task, ae_loop, folder / "autoencoder", progress=progress, description=title("autoencoder"))
            autoencoder = folder / "autoencoder" / "weights.safetensors"
        prior_cfg, prior_loop, prior_data = spec.priors
        if prior_data.get("codec_grids"):  # the codec's grids: its encoder settings are this round's
            prior_data = {**prior_data, "encoder_settings": spec.model.encoder_settings()}
        if spec.trains_priors:
            prior_files = RunFiles.in_folder(folder / "priors")
            start_over_if_changed(prior_files, autoencoder, folder / "priors" / "source")
            if priors is not None:
                start_over_if_changed(prior_files, priors, folder / "priors" / "source_priors")
            torch.manual_seed(prior_loop.seed)
            prior_task = HierarchyPriorTask(autoencoder, folders, prior_cfg, device=device, warm_start=priors,
                                            **prior_data)
            run(prior_task, prior_loop, folder / "priors", progress=progress, description=title("priors"))
            priors = folder / "priors" / "weights.safetensors"
        records.append(_training_records(autoencoder if spec.trains_autoencoder else None,
                                         priors if spec.trains_priors else None))
    assemble(autoencoder, priors, out, name=name, description=description,
             encoder_settings=rounds[-1].model.encoder_settings(), earlier_rounds=records[:-1])
    return out


def _training_records(autoencoder: Path, priors: Path | None) -> dict:
    """The training records of a round's phases, as their weights files hold them."""
    records = {}
    for kind, path in (("autoencoder", autoencoder), ("priors", priors)):
        if path is not None:
            with safe_open(str(path), "pt") as f:
                records[kind] = json.loads(f.metadata()["training"])
    return records


def assemble(autoencoder: Path, priors: Path, out: Path, *, name: str, description: str,
             encoder_settings: dict | None = None, earlier_rounds: list[dict] = ()) -> str:
    """One weights file (weights_io.save_hierarchy) from the two phases' outputs; its sha256.
    encoder_settings: HierarchyConfig.ENCODER_SETTINGS fields chosen after
    training, such as the quality levels (benchmarks/quality_ladder.py); None keeps the
    autoencoder's. earlier_rounds: the training records of the rounds before (kept in the
    metadata with this round's)."""
    from ..weights_io import save_hierarchy
    from .hierarchy_prior_task import load_hierarchy, read_level_priors

    model = load_hierarchy(autoencoder)
    if encoder_settings:
        model.config = model.config.with_encoder_settings(**encoder_settings)
    level_priors, _ = read_level_priors(priors)
    training = _training_records(autoencoder, priors)
    if earlier_rounds:
        training["earlier_rounds"] = list(earlier_rounds)
    return save_hierarchy(out, model, level_priors, name=name, description=description, training=training)
