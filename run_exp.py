"""One LoRA fine-tuning experiment (or, with peft=none, full fine-tuning), top to bottom:
config → seed → data → model + adapters → init → train → merge/save → evaluate → results.json.

    python run_exp.py                                   # embedded default, offline, CPU
    python run_exp.py -m ++init.direction=LoRA-One,LoRA-GA seed=1,2,3
"""
import os
import sys

import hydra

from lora_one.command_line import answered_by_hydra, hydra_arguments, resume_command

HYDRA_APP = {"version_base": "1.3", "config_path": "conf", "config_name": "config"}

if __name__ == "__main__":  # the command line is settled before the heavy imports below (torch alone: ~10 s)
    sys.argv[1:] = hydra_arguments(sys.argv[1:], int(os.environ.get("RANK", "0")))  # other ranks; resume=<run dir>
    if answered_by_hydra(sys.argv[1:]):  # --help, --cfg job, --info: Hydra prints them and runs nothing
        hydra.main(**HYDRA_APP)(lambda cfg: None)()
        sys.exit()

import contextlib
import hashlib
import json
import logging
import math
import shutil
import signal
import time
from typing import NoReturn

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list, set_seed
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from lora_one import ConfigError
from lora_one.config import accumulation_steps, check_config_keys, validate_config
from lora_one.data import encode_rows, make_batches, make_collator, prepare_data
from lora_one.diagnostics import alignment_diagnostics, finish_diagnostics
from lora_one.eval import EvaluationError, load_evaluator_items, run_evaluators
from lora_one.init import METHODS, init_method, redo_base_offset, save_init_artifacts, save_initial_adapter
from lora_one.init.dora import restore_exported_magnitudes
from lora_one.models import add_lora_adapters, load_model, load_tokenizer
from lora_one.models.adapters import ADAPTER, untie_adapted_weights
from lora_one.models.full_finetune import is_full_finetuning, train_every_weight
from lora_one.models.loading import name_base_model
from lora_one.models.model_card import base_model_record, write_model_card
from lora_one.profiling import measure
from lora_one.progress import configure_console
from lora_one.provenance import provenance
from lora_one.run_lock import RunDirLock
from lora_one.storage import RunDirError, storage_failure, write_json, writing
from lora_one.tracking import Tracker, sweep_group
from lora_one.train import build_optimizer, build_scheduler, evaluate_loss, train
from lora_one.train.callbacks import StepCallback, alignment, held_out_loss, log_step
from lora_one.train.checkpointing import Checkpointer, checkpoint_steps, training_data_digest
from lora_one.train.loop import NonFiniteLoss, TrainState
from lora_one.train.overfit import report_overfit
from lora_one.train.preemption import PreemptionSignal

log = logging.getLogger("run_exp")


class Experiment:
    """One run in `out_dir`, or its continuation there from a checkpoint (`cfg.resume`, skipping the init).
    `run()` lists the stages in order; each is one method below, in the same order."""

    def __init__(self, cfg: DictConfig, out_dir: str, wandb_group: str | None = None):
        self.start_time = time.time()
        configure_console(cfg.verbose)  # quiet unless verbose: no library deprecation warnings, no wandb banner
        validate_config(cfg)  # every group's settings, each checked once by the module that owns the group
        self.cfg = cfg
        state = PartialState(cpu=not torch.cuda.is_available())
        self.accelerator = Accelerator(cpu=state.device.type == "cpu",
                                       gradient_accumulation_steps=accumulation_steps(cfg.model, state.num_processes))
        self.out_dir = broadcast_object_list([out_dir])[0]  # each process composed its own run dir: use the main one's
        self.init_dir = os.path.join(self.out_dir, "init")
        # where this launch resumes from; a resume (or relaunch) that would change the training is refused
        self.checkpoints = Checkpointer.for_run(cfg, self.out_dir, self.accelerator)
        self.tracker = Tracker(cfg, self.out_dir, self.accelerator.is_main_process, wandb_group)
        self.method = init_method(cfg.init)
        self.preemption: PreemptionSignal | None = None

    def run(self) -> dict:
        set_seed(self.cfg.seed)
        self.setup_data()
        model, run_info = self.setup_model()
        # from here until results.json is written, a signal (Ctrl-C too) never loses the training
        self.preemption = PreemptionSignal(resume_command(self.out_dir, __file__))
        model, history = self.train(model, run_info)
        eval_loss = evaluate_loss(model, self.eval_loader, self.accelerator) if history.step else \
            run_info["eval_loss_after_init"]
        self.stop_if_preempted(history)
        trained = self.accelerator.unwrap_model(model)
        parameters = parameter_counts(trained)  # before a merge folds the adapters away
        self.export(trained)
        self.stop_if_preempted(history)
        results = self.results(trained, run_info, history, eval_loss, parameters)
        eval_failure = self.evaluate(trained, results, history)
        self.finish(results, eval_failure)
        return results

    def setup_data(self) -> None:
        """(prompt, response) pairs → token ids with the prompt masked out of the labels; the benchmarks'
        questions and the init's batches, all read before any training."""
        cfg, seq2seq = self.cfg, self.cfg.model.type == "seq2seq"
        self.tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
        # rows lost are counted
        self.data = prepare_data(cfg.dataset, cfg.seed, self.tokenizer, cfg.model.max_length, seq2seq)
        self.data_digest = training_data_digest(cfg.dataset, self.data.train_examples)
        self.checkpoints.check_data(self.data_digest)  # a resume on changed data is refused
        self.collate = make_collator(self.tokenizer)
        self.eval_items = load_evaluator_items(cfg.eval)  # the benchmarks' questions, checked before any training
        self.eval_loader = self.accelerator.prepare(DataLoader(self.data.eval_set, collate_fn=self.collate,
                                                               batch_size=cfg.model.per_device_batch_size))
        self.init_batches = None
        if self.method.needs_batches:
            init_set = self.data.train_set if cfg.init.max_length == cfg.model.max_length else \
                encode_rows(self.tokenizer, self.data.train_examples, cfg.init.max_length, seq2seq)
            self.init_batches = make_batches(self.tokenizer, init_set, cfg.init.bsz, self.method.batch_count(cfg.init))

    def setup_model(self):
        """The base model with adapters: initialised (first launch) or rebuilt to resume from a checkpoint.
        Returns the model and what results.json reports about the init (`run_info`)."""
        cfg = self.cfg
        model = load_model(cfg.model, self.tokenizer, cfg.cache_dir).to(self.accelerator.device)
        self.diagnostics = alignment_diagnostics(
            cfg, model, lambda: make_batches(self.tokenizer, self.data.train_set, cfg.diagnostics.bsz,
                                             cfg.diagnostics.iters), self.accelerator)
        if self.checkpoints.resume_from is not None:
            return self.rebuild_adapters(model)
        model, run_info = self.init_adapters(model)
        self.tracker.log_init(run_info["init_layers"], run_info["init_time_s"], run_info["init_peak_mem_mb"])
        if self.diagnostics:
            self.tracker.log(self.diagnostics.measure(model, 0), step=0)
        return model, run_info

    def init_adapters(self, model):
        """Wrap with adapters and initialise them: PEFT's own inits (LoRA, gaussian, PiSSA) while wrapping,
        the data-driven ones (LoRA-One, LoRA-GA, EVA) right after; the time and memory cover both, so all
        methods compare fairly. Full fine-tuning (peft=none): no adapters, no init; every weight trains
        from its pretrained value."""
        cfg, method, accelerator = self.cfg, self.method, self.accelerator
        eval_loss_base = evaluate_loss(model, self.eval_loader, accelerator)
        if is_full_finetuning(cfg.peft):
            log.info("full fine-tuning: no adapters, every weight trains")
            return train_every_weight(model), {
                "init_method": None, "init_time_s": 0.0, "init_peak_mem_mb": None, "init_layers": {},
                "rank_pattern": {}, "eval_loss_base": eval_loss_base, "eval_loss_after_init": eval_loss_base}
        log.info("starting the %s init", method.name)
        with measure(accelerator.device) as init_usage:
            model = add_lora_adapters(model, cfg.peft, cfg.model.type, method, cfg.init)
            report = method.initialise(model, cfg.init, self.init_batches, accelerator, cfg.model.type == "seq2seq")
        log.info("init %s: %.2f s, peak %.0f MB", method.name, init_usage.seconds, init_usage.peak_mem_mb)
        eval_loss_init = evaluate_loss(model, self.eval_loader, accelerator)
        log.info("eval loss: base %.4f → after init %.4f", eval_loss_base, eval_loss_init)
        if accelerator.is_main_process:
            if cfg.init.save_artifacts:
                save_init_artifacts(self.init_dir, report.gradients, self.init_batches or [], model)
            elif method.moves_base:  # needed to export the trained adapter against the original base, and to resume
                save_initial_adapter(model, os.path.join(self.init_dir, "adapter"))
        rank_pattern = dict(model.peft_config[ADAPTER].rank_pattern)  # per-layer ranks an init chose (EVA, rho > 1)
        return model, {"init_method": method.name, "init_time_s": init_usage.seconds,
                       "init_peak_mem_mb": init_usage.peak_mem_mb, "init_layers": report.layer_stats,
                       "rank_pattern": rank_pattern, "eval_loss_base": eval_loss_base,
                       "eval_loss_after_init": eval_loss_init, **report.extra}

    def rebuild_adapters(self, model):
        """Wrap with adapters for a resumed run, skipping the init: the adapter values come from the
        checkpoint (so PEFT's plain init suffices, no PiSSA SVD); an init that moved the base is redone
        from the initial adapter. The init report is the one saved with the checkpoint.
        Full fine-tuning: the checkpoint holds every weight."""
        cfg = self.cfg
        run_info = self.checkpoints.resumed_run_info()
        log.info("resuming from %s: init skipped", self.checkpoints.resume_from)
        if is_full_finetuning(cfg.peft):
            return train_every_weight(model), run_info
        model = add_lora_adapters(model, cfg.peft, cfg.model.type, METHODS["LoRA"], cfg.init,
                                  run_info.get("rank_pattern"))
        if self.method.moves_base:
            initial = self.checkpoints.initial_adapter()
            redo_base_offset(model, initial)
            copy = os.path.join(self.init_dir, "adapter")
            if self.accelerator.is_main_process and os.path.abspath(initial) != os.path.abspath(copy):
                shutil.copytree(initial, copy, dirs_exist_ok=True)
        return model, run_info

    def train(self, model, run_info: dict):
        """The optimizer steps, with a checkpoint every `checkpoint.every_n_steps`, at the end, and on a
        preemption signal (then: requeue or say how to continue, and exit). Returns the prepared model
        and the training's history."""
        cfg, accelerator = self.cfg, self.accelerator
        shuffle = torch.Generator().manual_seed(cfg.seed)
        train_loader = DataLoader(self.data.train_set, batch_size=cfg.model.per_device_batch_size, shuffle=True,
                                  collate_fn=self.collate, generator=shuffle)
        optimizer = build_optimizer(model, cfg.optim, cfg.model)
        model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
        steps_per_epoch = math.ceil(len(train_loader) / accelerator.gradient_accumulation_steps)
        total_steps = cfg.model.max_steps if cfg.model.max_steps >= 0 else cfg.model.epochs * steps_per_epoch
        history = TrainState(alignment=self.diagnostics.points() if self.diagnostics else {})
        if total_steps == 0:
            return model, history
        scheduler = build_scheduler(optimizer, cfg.model, total_steps)
        self.checkpoints.attach(model, optimizer, scheduler, shuffle, run_info, total_steps)
        if self.checkpoints.resume_from is not None:
            history = self.checkpoints.load()
            log.info("continuing at step %d of %d", history.step, total_steps)
            if self.diagnostics:
                self.diagnostics.continue_from(history.alignment)  # the points measured before the checkpoint
        self.checkpoints.set_aside_others()  # an earlier run's, unless this run continues them
        history = train(model, optimizer, scheduler, train_loader, accelerator, total_steps, cfg.optim.max_grad_norm,
                        shuffle, history, self.step_callbacks(model, total_steps), self.preemption.requested,
                        cfg.log_every)
        if history.interrupted:  # the checkpoint is written: requeue (slurm), or say how to continue, and exit
            self.tracker.finish()
            self.preemption.hand_over(accelerator.is_main_process)
        return model, history

    def step_callbacks(self, model, total_steps: int) -> list[StepCallback]:
        """After each step, in order: log it; the held-out loss and the alignment when due; a checkpoint when due."""
        cfg, tracker = self.cfg, self.tracker
        callbacks = [log_step(tracker)]
        if cfg.eval_loss_every:
            callbacks.append(held_out_loss(cfg.eval_loss_every, total_steps,
                                           lambda: evaluate_loss(model, self.eval_loader, self.accelerator), tracker))
        if self.diagnostics:
            callbacks.append(alignment(self.diagnostics, cfg.diagnostics.alignment_every,
                                       lambda: self.accelerator.unwrap_model(model), tracker))
        return [*callbacks, self.checkpoints.after_step]

    def stop_if_preempted(self, history: TrainState) -> None:
        """Between the stages after training: on a signal, checkpoint the finished training (unless its
        last step has one), requeue and exit; the relaunch skips to the evaluation."""
        if signalled_anywhere(self.preemption, self.accelerator):
            if history.step > 0:
                self.checkpoints.save_unless_saved(history)
            self.tracker.finish()
            self.preemption.hand_over(self.accelerator.is_main_process)

    def export(self, trained) -> None:
        """The adapter (PEFT format, always against the original base) and, with model.saving, the merged
        model; full fine-tuning: the trained model itself in merged/, always (it has no adapter instead)."""
        cfg, out_dir = self.cfg, self.out_dir
        full_finetuning = is_full_finetuning(cfg.peft)
        if self.accelerator.is_main_process:
            if not full_finetuning:
                save_adapter(trained, os.path.join(out_dir, "adapter"), cfg.model,
                             os.path.join(self.init_dir, "adapter") if self.method.moves_base else None)
            if cfg.model.saving or full_finetuning:
                save_merged(trained, self.tokenizer, os.path.join(out_dir, "merged"), full_finetuning)
        self.accelerator.wait_for_everyone()

    def results(self, trained, run_info: dict, history: TrainState, eval_loss: float, parameters: dict) -> dict:
        """results.json before the benchmarks: the config, the data, the init, the training's curves."""
        resolved = OmegaConf.to_container(self.cfg, resolve=True)
        trained_steps = [[history.step, eval_loss]] if history.step else []
        return {
            "config": resolved,
            "config_digest": hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16],
            "num_processes": self.accelerator.num_processes,
            # the file's sha256 (or the loaded rows'): a relaunch on other data is refused
            "training_data": self.data_digest,
            "data": self.data.report,  # rows read, duplicates, rows dropped or truncated at model.max_length
            **parameters,
            **run_info,
            "eval_loss": eval_loss,
            # the held-out loss over training: after the init (step 0), every `eval_loss_every` steps, at the end
            "eval_loss_curve": [[0, run_info["eval_loss_after_init"]], *history.eval_loss, *trained_steps],
            "train_loss_curve": history.loss,
            "lr_curve": history.lr,
            "grad_norm_curve": history.grad_norm,
            "final_train_loss": history.loss[-1] if history.loss else None,
            "steps": history.step,
            "train_time_s": history.train_seconds,
            "tokens_per_s": history.tokens_per_s if history.step else None,
            "resumed_from": self.checkpoints.resume_from,
            # what the weights trained on really were
            "base_model": base_model_record(self.cfg.model, trained.name_or_path),
            **finish_diagnostics(self.diagnostics, self.out_dir, self.accelerator.is_main_process),
        }

    def evaluate(self, trained, results: dict, history: TrainState) -> str | None:
        """The benchmarks chosen by conf/eval on the trained model: <task>_predictions.jsonl in the run dir,
        metrics under results["eval"]; returns the first failure in words, or None."""
        results["eval"], failure = run_evaluators(self.cfg.eval, self.eval_items, trained, self.tokenizer,
                                                  self.accelerator, self.out_dir,
                                                  before_each=lambda: self.stop_if_preempted(history))
        results["provenance"] = provenance(self.start_time)  # code version, packages, device, start/end times
        return failure

    def finish(self, results: dict, eval_failure: str | None) -> None:
        """Write results.json (and the adapter's model card, which quotes it); a finished run's checkpoints
        go (a failed benchmark keeps them: a relaunch resumes to redo it)."""
        cfg, out_dir = self.cfg, self.out_dir
        if self.accelerator.is_main_process:
            write_json(os.path.join(out_dir, "results.json"), results)
            if not is_full_finetuning(cfg.peft):
                with writing(os.path.join(out_dir, "adapter")):
                    write_model_card(os.path.join(out_dir, "adapter"), cfg, results)
            log.info("eval loss %.4f after %d steps; results in %s", results["eval_loss"], results["steps"], out_dir)
            if cfg.get("overfit_check"):  # debug=overfit: its verdict, the run's last line
                report_overfit(results["train_loss_curve"], cfg.overfit_check)
        if not eval_failure:
            self.checkpoints.finish(cfg.checkpoint.keep_final)
        self.preemption.restore()
        self.tracker.finish(results)
        if eval_failure:
            raise EvaluationError(f"{eval_failure}; the training's results are in {out_dir}/results.json")


def run(cfg: DictConfig, out_dir: str, wandb_group: str | None = None) -> dict:
    """Train and evaluate in `out_dir` (or continue there from a checkpoint); returns results.json's contents."""
    return Experiment(cfg, out_dir, wandb_group).run()


def parameter_counts(model) -> dict:
    return {"trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total_params": sum(p.numel() for p in model.parameters())}


def save_adapter(trained, path: str, model_cfg: DictConfig, initial_adapter: str | None) -> None:
    """The PEFT adapter, against the original base even when the init moved it (`initial_adapter`: PEFT
    converts the trained adapter into one that applies to the unmoved weights)."""
    with writing(path):  # an unwritable file: one line, not safetensors' traceback
        trained.save_pretrained(path, path_initial_model_for_weight_conversion=initial_adapter)
    if initial_adapter:
        restore_exported_magnitudes(trained, path)  # DoRA: PEFT's conversion drops m
    name_base_model(path, model_cfg)  # the hub id, not this machine's cache path


def save_merged(trained, tokenizer, path: str, full_finetuning: bool) -> None:
    """The model with the adapters merged into its weights (full fine-tuning: the model as trained)."""
    if not full_finetuning:
        untie_adapted_weights(trained)  # a tied output head merges into its own copy, not the embeddings
    merged = trained if full_finetuning else trained.merge_and_unload()
    with writing(path):
        merged.save_pretrained(path)
        tokenizer.save_pretrained(path)


def signalled_anywhere(preemption: PreemptionSignal, accelerator: Accelerator) -> bool:
    """Whether any process caught a preemption signal: all stop at the same stage, or none does."""
    caught = torch.tensor([float(preemption.requested())], device=accelerator.device)
    return bool(accelerator.reduce(caught, "sum").item() > 0)


@hydra.main(**HYDRA_APP)
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    export_submitit_ranks()
    overrides = list(hydra_cfg.overrides.task)
    first_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        check_config_keys(cfg, overrides)  # a typo'd ++key, a word where a number belongs
        with RunDirLock(hydra_cfg.runtime.output_dir) if first_rank else contextlib.nullcontext():  # one run per dir
            return run(cfg, hydra_cfg.runtime.output_dir, sweep_group(overrides))["eval_loss"]
    except (ConfigError, RunDirError, NonFiniteLoss, EvaluationError) as err:
        # one line naming the culprit, no traceback
        raise SystemExit(f"error: {err}") from None
    except (OSError, RuntimeError) as err:  # a full disk, a read-only or vanished run dir: the path and the cause
        failure = storage_failure(err, hydra_cfg.runtime.output_dir)
        if failure is None:
            raise
        raise SystemExit(f"error: {failure}") from None
    except KeyboardInterrupt:  # Ctrl-C before training, or a second one during it: stop at once, no traceback,
        pass  # after this handler, which holds the interrupted frames: tqdm ends its bar's line when they go
    stop_at_once(hydra_cfg.runtime.output_dir, first_rank)


def stop_at_once(run_dir: str, main_process: bool) -> NoReturn:
    """Exit 130 with one line: the command that continues from the newest checkpoint, if there is one."""
    if main_process and checkpoint_steps(run_dir):
        print(f"interrupted at once, not checkpointed; continue from the newest checkpoint with: "
              f"{resume_command(run_dir, __file__)}", file=sys.stderr)
    elif main_process:
        print("interrupted at once, before any checkpoint: nothing to continue", file=sys.stderr)
    sys.exit(128 + signal.SIGINT)


def export_submitit_ranks() -> None:
    """In a slurm job of several tasks (the slurm launcher preset runs one per GPU), give
    torch.distributed, and so Accelerate, each task's rank, world size and master address."""
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export()


if __name__ == "__main__":
    main()
