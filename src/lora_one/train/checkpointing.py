"""Checkpoints to continue a run exactly after preemption or Ctrl-C (the signal itself: preemption.py beside
this module). A run talks to one `Checkpointer`; the functions below it are its parts.

A checkpoint, `<run dir>/checkpoints/step_<N>/`, holds what training changes: the trainable weights (the
adapters; with peft=none, every weight), the optimizer and schedule, every process's RNG states and the
data position (epoch, batches drawn, the shuffle generator's state when the epoch began), plus the run's
history so far. The frozen base is rebuilt from the model config; an init that moved it (LoRA-GA, PiSSA:
W_res = W₀ − s·B₀A₀) is redone from the initial adapter in `<run dir>/init/adapter` (init.redo_base_offset),
so the base is never stored.
It is written into a temporary directory renamed when complete: a `step_<N>` directory is never partial.
Its last file, `manifest.json`, holds each file's size and sha256: a checkpoint damaged afterwards (a
truncated copy, a disk error) is named with its bad file, and `resume=auto` falls back to the newest
intact one (`checkpoint.keep` ≥ 2 keeps one to fall back to). The initial adapter has a manifest too.
It records the training config and the digest of the training data (`training_data_digest`): a resume with
either changed is refused, as is a relaunch (resume=auto) that would replace a finished run in its run
dir with another training. The checkpoints of a run dir belong to one run: a run that does not continue
them (resume=never) moves them aside first, so rotation and a later resume see only its own. Once a run
has written its results.json, nothing is left to resume: its checkpoints are removed (`remove_checkpoints`)
unless `checkpoint.keep_final` keeps them.
"""
import hashlib
import json
import logging
import os
import pickle
import random
import shutil
import time
from dataclasses import dataclass, fields

import numpy as np
import torch
from accelerate import Accelerator
from omegaconf import DictConfig, OmegaConf
from peft import PeftModel
from safetensors.torch import load_file, save_file

from lora_one import ConfigError
from lora_one.data.glue import glue_file
from lora_one.manifest import MANIFEST, manifest_damage, sha256_of, write_manifest
from lora_one.run_lock import refuse_if_in_use
from lora_one.storage import os_error_cause, write_json, writing
from lora_one.train.loop import TrainState

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
PREFIX = "step_"
RESULTS = "results.json"
# Settings that may change between a run and its resumption: bookkeeping, benchmarks, and settings that
# change what is logged, never what is computed. Listed one by one: any other change refuses a resume.
BOOKKEEPING_KEYS = ("resume", "checkpoint", "wandb", "eval", "cache_dir", "log_every", "paths")


def training_config(cfg: DictConfig) -> dict:
    """The resolved config but what may change between a run and its resumption (bookkeeping, benchmarks)."""
    return {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in BOOKKEEPING_KEYS}


def changed_settings(saved, now, prefix: str = "") -> list[str]:
    """Dotted names of the settings whose values differ between two resolved configs (a list is one setting)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        return [name for key in sorted(saved.keys() | now.keys())
                for name in changed_settings(saved.get(key), now.get(key), f"{prefix}{key}.")]
    return [] if saved == now else [prefix[:-1]]


def is_interpolated(cfg: DictConfig, name: str) -> bool:
    """Whether the setting `name` takes its value from another one (`init.max_length: ${model.max_length}`)."""
    parent, _, key = name.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return isinstance(node, DictConfig) and key in node and OmegaConf.is_interpolation(node, key)


@dataclass(frozen=True)
class RecordedTraining:
    """A training this run must agree with: the checkpoint it continues, or (resume=auto, no checkpoint)
    the finished run in its run dir, which a relaunch may redo but not replace with another training."""
    name: str  # how messages name it: "checkpoint …", "the finished run in …"
    config: dict  # its resolved config (bookkeeping keys are not compared)
    data: dict | None  # its `training_data_digest`; None: recorded before data digests
    remedy: str = "resume=never starts over (or use another run dir)"  # how a changed config's refusal ends

    def check_config(self, cfg: DictConfig) -> None:
        """One ConfigError naming a changed setting and its group: one set directly is named before one
        interpolated from it (model=… changes init.max_length too, but the change is the model's)."""
        saved = {k: v for k, v in self.config.items() if k not in BOOKKEEPING_KEYS}
        now = json.loads(json.dumps(training_config(cfg)))  # as stored: tuples → lists
        changed = sorted(changed_settings(saved, now), key=lambda name: is_interpolated(cfg, name))
        if changed:
            raise ConfigError(f"{self.name} was written with another '{changed[0].split('.')[0]}' config "
                              f"({changed[0]} differs); {self.remedy}")

    def check_data(self, data: dict) -> None:
        """One ConfigError if the training data changed since (a file edited under the same path)."""
        if self.data is None:
            log.warning("%s records no digest of its training data (written before digests): not verified", self.name)
        elif self.data["sha256"] != data["sha256"]:
            raise ConfigError(f"{self.name} was trained on other data ({data['source']}: sha256 "
                              f"{self.data['sha256'][:12]}… then, {data['sha256'][:12]}… now); "
                              "resume=never starts over (or use another run dir)")


def checkpoint_training(checkpoint: str, named_by: str = "auto") -> RecordedTraining:
    """The training a checkpoint continues; `named_by`: the `resume` setting that chose it (a path
    continues that training as it was: the refusal says so)."""
    with open(os.path.join(checkpoint, "trainer_state.json")) as f:
        saved = json.load(f)
    remedy = RecordedTraining.remedy if named_by == "auto" else \
        f"resume={named_by} continues that training as it was: leave out the settings that change it"
    return RecordedTraining(f"checkpoint {checkpoint}", saved["config"], saved.get("training_data"), remedy)


def recorded_training(resume_from: str | None, resume: str, run_dir: str) -> RecordedTraining | None:
    """What this run must agree with: the checkpoint it resumes; else, with resume=auto, a finished run
    (results.json) in its run dir; None when neither (resume=never replaces a finished run)."""
    if resume_from is not None:
        return checkpoint_training(resume_from, resume)
    results = os.path.join(run_dir, RESULTS)
    if resume != "auto" or not os.path.isfile(results):
        return None
    try:
        with open(results, encoding="utf-8") as f:
            finished = json.load(f)
        config = finished["config"]
    except (ValueError, TypeError, KeyError) as err:  # not JSON, not UTF-8, not a run's results
        raise ConfigError(f"{results} is not the results of a run ({type(err).__name__}: {err}), so whether this "
                          "launch would replace other training cannot be told: resume=never starts over") from None
    return RecordedTraining(f"the finished run in {run_dir}", config, finished.get("training_data"))


def training_data_digest(dataset: DictConfig, train_examples: list[dict]) -> dict:
    """What identifies the data a run trains on: the sha256 of the file it read (a GLUE folder: its
    train.tsv, as data/loading.py reads it), or, for generated or hub data, of the training examples
    as loaded."""
    if dataset.path:
        path = glue_file(dataset.path, "train.tsv")
        return {"source": path, "sha256": sha256_of(path)}
    loaded = json.dumps(train_examples, sort_keys=True).encode()
    return {"source": f"dataset '{dataset.name}' as loaded", "sha256": hashlib.sha256(loaded).hexdigest()}


def check_checkpoint_config(cfg: DictConfig) -> None:
    """What the numeric checks (config.py) cannot say: `resume` names something, `keep_final` is a yes or no."""
    if cfg.resume in (None, ""):
        raise ConfigError("resume must be auto, never or a path (got nothing)")
    if not isinstance(cfg.checkpoint.keep_final, bool):
        raise ConfigError(f"checkpoint.keep_final must be true or false (got {cfg.checkpoint.keep_final!r})")


def checkpoint_damage(checkpoint: str) -> str | None:
    """What is wrong with a checkpoint's (or the initial adapter's) files against its manifest (the first
    bad file, named), or None if all are intact. One without a manifest predates checksums: not checked."""
    if not os.path.exists(os.path.join(checkpoint, MANIFEST)):
        log.warning("%s has no %s (written before checksums): not verified", checkpoint, MANIFEST)
        return None
    return manifest_damage(checkpoint)


def checkpoint_steps(run_dir: str) -> list[int]:
    """The steps of a run directory's complete checkpoints (a `.tmp-` one is an unfinished write), in order."""
    root = os.path.join(run_dir, CHECKPOINTS)
    names = os.listdir(root) if os.path.isdir(root) else []
    return sorted(int(name[len(PREFIX):]) for name in names if name.startswith(PREFIX))


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest intact checkpoint of a run directory, or None if it has none. Damaged newer ones are
    reported (warning, naming the file) and skipped; if all are damaged, a ConfigError names the newest."""
    root = os.path.join(run_dir, CHECKPOINTS)
    damaged = []
    for step in reversed(checkpoint_steps(run_dir)):
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
    checkpoint, or a run directory whose newest checkpoint is taken). Another run directory that a
    live run holds (its lock) is refused: that run is still writing and rotating its checkpoints."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    is_checkpoint = os.path.isfile(os.path.join(resume, "trainer_state.json"))
    source = run_dir_of(resume) if is_checkpoint else os.path.abspath(resume)
    if source != os.path.abspath(run_dir):  # this run holds its own run dir's lock
        refuse_if_in_use(source, "it is still writing checkpoints; resume from it once that run has stopped")
    if is_checkpoint:
        damage = checkpoint_damage(resume)
        if damage is not None:
            raise ConfigError(f"checkpoint {resume} is damaged: {damage}")
        return resume
    found = latest_checkpoint(resume) if os.path.isdir(resume) else None
    if found is None and os.path.isfile(os.path.join(resume, RESULTS)):
        raise ConfigError(f"resume={resume!r} is a finished run ({RESULTS} written, no checkpoint left): "
                          "nothing to resume")
    if found is None:
        raise ConfigError(f"resume={resume!r} is neither a checkpoint nor a run directory with checkpoints")
    return found


def run_dir_of(checkpoint: str) -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))


def check_initial_adapter(path: str) -> None:
    """The initial adapter that a resumed run of an init moving the base (LoRA-GA, PiSSA) rebuilds the
    base from: present, and intact against its manifest, or one ConfigError."""
    if not os.path.isdir(path):
        raise ConfigError(f"the initial adapter {path} is missing: resuming an init that moves the base weights "
                          "needs it; resume=never starts over")
    damage = checkpoint_damage(path)
    if damage is not None:
        raise ConfigError(f"the initial adapter {path} is damaged: {damage}; resume=never starts over")


def set_aside_checkpoints(run_dir: str, resume_from: str | None) -> None:
    """Move the run dir's checkpoints to `checkpoints.replaced-<time>/` when this run does not continue
    them (resume=never, or a checkpoint of another run dir): rotation ranks by step, so an earlier run's
    step_300 would delete this run's step_33, and a relaunch would resume the earlier run."""
    root = os.path.join(run_dir, CHECKPOINTS)
    if resume_from is not None and run_dir_of(resume_from) == os.path.abspath(run_dir):
        return
    earlier = checkpoint_steps(run_dir)
    if not earlier:
        return
    aside = f"{root}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    with writing(aside):
        os.rename(root, aside)
    log.warning("%s held an earlier run's checkpoints (%s); this run does not continue them: moved to %s",
                root, ", ".join(f"{PREFIX}{step}" for step in earlier), aside)


def remove_checkpoints(run_dir: str) -> None:
    """Delete a finished run's checkpoints (its results.json is written: nothing is left to resume). A
    failure only warns: the run's results are complete."""
    root = os.path.join(run_dir, CHECKPOINTS)
    if not os.path.isdir(root):
        return
    try:
        shutil.rmtree(root)
    except OSError as err:
        log.warning("the finished run's checkpoints stay in %s: %s", root, os_error_cause(err, root))
        return
    log.info("the run is finished: its checkpoints %s are removed (checkpoint.keep_final=true keeps them)", root)


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


def read_run_info(checkpoint: str) -> dict:
    with open(os.path.join(checkpoint, "trainer_state.json")) as f:
        return json.load(f)["run_info"]


# numpy's RNG state is an array: what unpickling it needs beyond torch's weights-only defaults
NUMPY_STATE_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_state(path: str):
    """A state saved with torch.save, unpickled weights-only: tensors, containers, numbers, numpy's RNG
    array, never code. `resume=` may name a checkpoint from anywhere, and a manifest proves only that the
    files are as written, not who wrote them."""
    with torch.serialization.safe_globals(NUMPY_STATE_GLOBALS):
        try:
            return torch.load(path, weights_only=True)
        except pickle.UnpicklingError as err:
            raise ConfigError(f"{path} holds more than tensors and numbers ({_first_line(err)}): not loaded, "
                              "as it could run code; resume from a checkpoint this framework wrote") from err


def _first_line(err: Exception) -> str:
    """torch's reason (e.g. `GLOBAL posix.system`), not its advice to load with weights_only=False."""
    return next((line.strip().rstrip(".") for line in str(err).splitlines() if "GLOBAL" in line), type(err).__name__)




class Checkpointer:
    """The checkpoints of one run directory: where a launch resumes, writing one every `every_n_steps`
    optimizer steps, at the last step and on a stop request, keeping the newest `keep`, and loading one.

    Built before the model (the resume point decides between the init and a rebuild), it is given the
    objects a checkpoint holds once they exist (`attach`). Every process calls it alike; the main
    process writes the shared files, each process its own RNG states."""

    def __init__(self, run_dir: str, accelerator: Accelerator, keep: int = 2, every_n_steps: int = 0,
                 config: dict | None = None, resume_from: str | None = None):
        self.run_dir, self.accelerator = run_dir, accelerator
        self.keep, self.every_n_steps = keep, every_n_steps
        self.config = config  # the `training_config` a resume must agree with
        self.resume_from = resume_from  # the checkpoint this launch continues, or None
        self.data: dict | None = None  # the `training_data_digest` a resume must agree with
        self.run_info: dict = {}  # what a resumed run reports about the part it skips (init, losses before training)
        self.earlier: RecordedTraining | None = None  # the training this run must agree with (for_run)
        self.written: list[int] = []  # steps checkpointed by this launch
        self.model = self.optimizer = self.scheduler = self.shuffle = None
        self.total_steps = 0

    @classmethod
    def for_run(cls, cfg: DictConfig, run_dir: str, accelerator: Accelerator) -> "Checkpointer":
        """The run's checkpoints, resuming as `cfg.resume` says; a resume with another training config, or a
        relaunch that would replace a finished run with another training, is refused (ConfigError)."""
        resume_from = checkpoint_to_resume(str(cfg.resume), run_dir)
        checkpointer = cls(run_dir, accelerator, cfg.checkpoint.keep, cfg.checkpoint.every_n_steps,
                           training_config(cfg), resume_from)
        checkpointer.earlier = recorded_training(resume_from, str(cfg.resume), run_dir)
        if checkpointer.earlier is not None:
            checkpointer.earlier.check_config(cfg)
        return checkpointer

    def check_data(self, data: dict) -> None:
        """Record the training data's digest; a resume (or relaunch) on changed data is refused."""
        self.data = data
        if self.earlier is not None:
            self.earlier.check_data(data)

    def resumed_run_info(self) -> dict:
        """What the checkpoint resumed from reports about the init it skips (init statistics, first losses)."""
        return read_run_info(self.resume_from)

    def initial_adapter(self) -> str:
        """The initial adapter of the resumed run (an init that moved the base is redone from it), checked."""
        path = os.path.join(run_dir_of(self.resume_from), "init", "adapter")
        check_initial_adapter(path)
        return path

    def attach(self, model, optimizer, scheduler, shuffle: torch.Generator, run_info: dict | None = None,
               total_steps: int = 0) -> None:
        """The objects a checkpoint holds (prepared by Accelerate), the run's `run_info`, and its last step."""
        self.model, self.optimizer, self.scheduler, self.shuffle = model, optimizer, scheduler, shuffle
        self.run_info, self.total_steps = run_info or {}, total_steps

    def set_aside_others(self) -> None:
        """On the main process: move aside the run dir's checkpoints this launch does not continue."""
        if self.accelerator.is_main_process:
            set_aside_checkpoints(self.run_dir, self.resume_from)

    def after_step(self, state: TrainState, stopping: bool) -> None:
        """The training loop's checkpoint callback: on a stop request, every `every_n_steps` steps and at the last."""
        every = self.every_n_steps
        if stopping or (every > 0 and (state.step % every == 0 or state.step == self.total_steps)):
            self.save(state)

    def save_unless_saved(self, state: TrainState) -> None:
        """A checkpoint of the finished training (a stop between the later stages), unless its last step has one."""
        if state.step not in self.written:
            self.save(state)

    def save(self, state: TrainState) -> str:
        """Write `<run dir>/checkpoints/step_<state.step>` into a temporary directory renamed when complete
        (every process writes its own RNG states, the main process the rest), then delete all but the
        newest `keep` checkpoints."""
        accelerator = self.accelerator
        root = os.path.join(self.run_dir, CHECKPOINTS)
        final = os.path.join(root, f"{PREFIX}{state.step}")
        tmp = os.path.join(root, f".tmp-{PREFIX}{state.step}")
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        accelerator.wait_for_everyone()
        torch.save(rng_states(self.shuffle, state), os.path.join(tmp, f"rng_{accelerator.process_index}.pt"))
        if accelerator.is_main_process:
            with writing(final):
                save_file(trainable_state(accelerator.unwrap_model(self.model)),
                          os.path.join(tmp, "trainable.safetensors"))
                torch.save(self.optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
                torch.save(self.scheduler.state_dict(), os.path.join(tmp, "scheduler.pt"))
            trainer_state = {k: v for k, v in vars(state).items() if k not in ("epoch_shuffle_state", "interrupted")}
            trainer_state.update(num_processes=accelerator.num_processes, run_info=self.run_info, config=self.config,
                                 training_data=self.data)
            write_json(os.path.join(tmp, "trainer_state.json"), trainer_state, indent=1)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_manifest(tmp)  # last: every process's files are in
            shutil.rmtree(final, ignore_errors=True)  # the same step saved again after a resume
            os.replace(tmp, final)
            for step in checkpoint_steps(self.run_dir)[:-self.keep]:
                shutil.rmtree(os.path.join(root, f"{PREFIX}{step}"))
            log.info("checkpoint at step %d: %s", state.step, final)
        accelerator.wait_for_everyone()
        self.written.append(state.step)
        return final

    def load(self, checkpoint: str | None = None) -> TrainState:
        """Restore a checkpoint (default: the resume point) into the attached model, optimizer, schedule and
        shuffle generator, and this process's RNG states; returns the training state to continue from."""
        checkpoint = checkpoint or self.resume_from
        accelerator = self.accelerator
        with open(os.path.join(checkpoint, "trainer_state.json")) as f:
            saved = json.load(f)
        if saved["num_processes"] != accelerator.num_processes:
            raise ConfigError(f"checkpoint {checkpoint} was written by {saved['num_processes']} processes; "
                              f"resume it with as many (now {accelerator.num_processes})")
        weights = load_file(os.path.join(checkpoint, "trainable.safetensors"))
        params = {name: p for name, p in accelerator.unwrap_model(self.model).named_parameters() if p.requires_grad}
        if params.keys() != weights.keys():
            raise ConfigError(f"checkpoint {checkpoint} holds other trainable weights than this config's adapters")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(weights[name])
        self.optimizer.load_state_dict(load_state(os.path.join(checkpoint, "optimizer.pt")))
        self.scheduler.load_state_dict(load_state(os.path.join(checkpoint, "scheduler.pt")))
        rng = load_state(os.path.join(checkpoint, f"rng_{accelerator.process_index}.pt"))
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None:
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.shuffle.set_state(rng["epoch_shuffle"])
        kept = {f.name for f in fields(TrainState)} & saved.keys()  # an older checkpoint lacks newer fields
        return TrainState(**{name: saved[name] for name in kept}, epoch_shuffle_state=rng["epoch_shuffle"])

    def finish(self, keep_final: bool) -> None:
        """A finished run (results.json written) leaves nothing to resume: its checkpoints go, unless kept."""
        if self.accelerator.is_main_process and not keep_final:
            remove_checkpoints(self.run_dir)
