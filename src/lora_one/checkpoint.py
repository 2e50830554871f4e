"""Checkpoints to continue a run exactly after preemption (the signal itself: train/preemption.py).

A checkpoint, `<run dir>/checkpoints/step_<N>/`, holds what training changes: the trainable weights (the
adapters; with peft=none, every weight), the optimizer and schedule, every process's RNG states and the
data position (epoch, batches drawn, the shuffle generator's state when the epoch began), plus the run's
history so far. The frozen base is rebuilt from the model config; an init that moved it (LoRA-GA, PiSSA:
W_res = W₀ − s·B₀A₀) is redone from the initial adapter in `<run dir>/init/adapter` (init.redo_base_offset),
so the base is never stored.
It is written into a temporary directory renamed when complete: a `step_<N>` directory is never partial.
Its last file, `manifest.json`, holds each file's size and sha256: a checkpoint damaged afterwards (a
truncated copy, a disk error) is named with its bad file, and `resume=auto` falls back to the newest
intact one (`checkpoint.keep` ≥ 2 keeps one to fall back to).
"""
import hashlib
import json
import logging
import os
import random
import shutil

import numpy as np
import torch
from accelerate import Accelerator
from omegaconf import DictConfig, OmegaConf
from peft import PeftModel
from safetensors.torch import load_file, save_file

from lora_one import ConfigError
from lora_one.run_dir import write_json, writing
from lora_one.train.loop import TrainState

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
PREFIX = "step_"
MANIFEST = "manifest.json"
BOOKKEEPING_KEYS = ("resume", "checkpoint", "wandb", "eval", "cache_dir")


def training_config(cfg: DictConfig) -> dict:
    """The resolved config but what may change between a run and its resumption (bookkeeping, benchmarks)."""
    return {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in BOOKKEEPING_KEYS}


def check_same_training(checkpoint: str, cfg: DictConfig) -> None:
    """A checkpoint continues only the training it comes from: one ConfigError naming the first difference."""
    with open(os.path.join(checkpoint, "trainer_state.json")) as f:
        saved = json.load(f)["config"]
    now = json.loads(json.dumps(training_config(cfg)))  # as stored: tuples → lists
    for group in sorted(saved.keys() | now.keys()):
        if saved.get(group) != now.get(group):
            raise ConfigError(f"checkpoint {checkpoint} was written with another '{group}' config; "
                              "resume=never starts over (or use another run dir)")


def check_checkpoint_config(cfg: DictConfig) -> None:
    """What the numeric checks (config.py) cannot say: `resume` names something."""
    if cfg.resume in (None, ""):
        raise ConfigError("resume must be auto, never or a path (got nothing)")


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(checkpoint: str) -> None:
    """Size and sha256 of every file of the checkpoint, written last."""
    files = {name: {"bytes": os.path.getsize(os.path.join(checkpoint, name)), "sha256": sha256_of(os.path.join(checkpoint, name))}
             for name in sorted(os.listdir(checkpoint)) if name != MANIFEST}
    write_json(os.path.join(checkpoint, MANIFEST), {"files": files}, indent=1)


def checkpoint_damage(checkpoint: str) -> str | None:
    """What is wrong with a checkpoint's files against its manifest (the first bad file, named), or
    None if all are intact. A checkpoint without a manifest predates checksums: not checked."""
    manifest_path = os.path.join(checkpoint, MANIFEST)
    if not os.path.exists(manifest_path):
        log.warning("checkpoint %s has no %s (written before checksums): not verified", checkpoint, MANIFEST)
        return None
    try:
        with open(manifest_path) as f:
            files = json.load(f)["files"]
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST} is not a valid manifest"
    for name, expected in files.items():
        path = os.path.join(checkpoint, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        size = os.path.getsize(path)
        if size != expected["bytes"]:
            return f"{name} is {size} bytes, {expected['bytes']} were written (truncated?)"
        if sha256_of(path) != expected["sha256"]:
            return f"{name} does not match its sha256 (damaged)"
    return None


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest intact checkpoint of a run directory, or None if it has none. Damaged newer ones are
    reported (warning, naming the file) and skipped; if all are damaged, a ConfigError names the newest."""
    root = os.path.join(run_dir, CHECKPOINTS)
    steps = [int(name[len(PREFIX):]) for name in os.listdir(root) if name.startswith(PREFIX)] if os.path.isdir(root) else []
    damaged = []
    for step in sorted(steps, reverse=True):
        checkpoint = os.path.join(root, f"{PREFIX}{step}")
        damage = checkpoint_damage(checkpoint)
        if damage is None:
            return checkpoint
        log.warning("checkpoint %s is damaged: %s; falling back to an older one", checkpoint, damage)
        damaged.append(f"{checkpoint}: {damage}")
    if damaged:
        raise ConfigError(f"no intact checkpoint in {root} ({damaged[0]}); resume=never starts over")
    return None


def checkpoint_to_resume(resume: str, run_dir: str) -> str | None:
    """`resume`: "auto" (this run directory's newest checkpoint, if any), "never", or a path (a
    checkpoint, or a run directory whose newest checkpoint is taken)."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    if os.path.isfile(os.path.join(resume, "trainer_state.json")):
        damage = checkpoint_damage(resume)
        if damage is not None:
            raise ConfigError(f"checkpoint {resume} is damaged: {damage}")
        return resume
    found = latest_checkpoint(resume) if os.path.isdir(resume) else None
    if found is None:
        raise ConfigError(f"resume={resume!r} is neither a checkpoint nor a run directory with checkpoints")
    return found


def run_dir_of(checkpoint: str) -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))


def trainable_state(model: PeftModel) -> dict[str, torch.Tensor]:
    return {name: p.detach().contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}


def rng_states(shuffle: torch.Generator, state: TrainState) -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "epoch_shuffle": state.epoch_shuffle_state,
    }


def save_checkpoint(run_dir: str, model, optimizer, scheduler, state: TrainState, shuffle: torch.Generator,
                    accelerator: Accelerator, run_info: dict, keep: int, config: dict | None = None) -> str:
    """Write `<run_dir>/checkpoints/step_<state.step>` (every process writes its own RNG states, the
    main process the rest), then delete all but the newest `keep` checkpoints. `run_info`: what the
    resumed run reports about the part it skips (init statistics, losses before training); `config`:
    the `training_config` it continues."""
    root = os.path.join(run_dir, CHECKPOINTS)
    final = os.path.join(root, f"{PREFIX}{state.step}")
    tmp = os.path.join(root, f".tmp-{PREFIX}{state.step}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    torch.save(rng_states(shuffle, state), os.path.join(tmp, f"rng_{accelerator.process_index}.pt"))
    if accelerator.is_main_process:
        with writing(final):
            save_file(trainable_state(accelerator.unwrap_model(model)), os.path.join(tmp, "trainable.safetensors"))
            torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
            torch.save(scheduler.state_dict(), os.path.join(tmp, "scheduler.pt"))
        trainer_state = {k: v for k, v in vars(state).items() if k not in ("epoch_shuffle_state", "interrupted")}
        trainer_state.update(num_processes=accelerator.num_processes, run_info=run_info, config=config)
        write_json(os.path.join(tmp, "trainer_state.json"), trainer_state, indent=1)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_manifest(tmp)  # last: every process's files are in
        shutil.rmtree(final, ignore_errors=True)  # the same step saved again after a resume
        os.replace(tmp, final)
        older = sorted(int(n[len(PREFIX):]) for n in os.listdir(root) if n.startswith(PREFIX))[:-keep]
        for step in older:
            shutil.rmtree(os.path.join(root, f"{PREFIX}{step}"))
        log.info("checkpoint at step %d: %s", state.step, final)
    accelerator.wait_for_everyone()
    return final


def read_run_info(checkpoint: str) -> dict:
    with open(os.path.join(checkpoint, "trainer_state.json")) as f:
        return json.load(f)["run_info"]


def load_checkpoint(checkpoint: str, model, optimizer, scheduler, shuffle: torch.Generator,
                    accelerator: Accelerator) -> TrainState:
    """Restore what `save_checkpoint` wrote into the prepared model/optimizer and the schedule, and
    this process's RNG states; returns the training state to continue from."""
    with open(os.path.join(checkpoint, "trainer_state.json")) as f:
        saved = json.load(f)
    if saved["num_processes"] != accelerator.num_processes:
        raise ConfigError(f"checkpoint {checkpoint} was written by {saved['num_processes']} processes; "
                          f"resume it with as many (now {accelerator.num_processes})")
    weights = load_file(os.path.join(checkpoint, "trainable.safetensors"))
    params = {name: p for name, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
    if params.keys() != weights.keys():
        raise ConfigError(f"checkpoint {checkpoint} holds other trainable weights than this config's adapters")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(weights[name])
    optimizer.load_state_dict(torch.load(os.path.join(checkpoint, "optimizer.pt"), weights_only=False))
    scheduler.load_state_dict(torch.load(os.path.join(checkpoint, "scheduler.pt"), weights_only=False))
    rng = torch.load(os.path.join(checkpoint, f"rng_{accelerator.process_index}.pt"), weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None:
        torch.cuda.set_rng_state_all(rng["cuda"])
    shuffle.set_state(rng["epoch_shuffle"])
    fields = {k: v for k, v in saved.items() if k not in ("num_processes", "run_info", "config")}
    return TrainState(**fields, epoch_shuffle_state=rng["epoch_shuffle"])
