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
from lora_one.checkpoint import check_checkpoint_config, check_initial_adapter, checkpoint_steps, \
    checkpoint_to_resume, load_checkpoint, read_run_info, recorded_training, remove_checkpoints, run_dir_of, \
    save_checkpoint, set_aside_checkpoints, training_config, training_data_digest
from lora_one.config import accumulation_steps, check_config_keys, validate_config
from lora_one.data import encode_rows, make_batches, make_collator, prepare_data
from lora_one.diagnostics import alignment_diagnostics, finish_diagnostics
from lora_one.eval import EvaluationError, load_evaluator_items, run_evaluators
from lora_one.init import METHODS, InitMethod, init_method, redo_base_offset, save_init_artifacts, save_initial_adapter
from lora_one.init.dora import restore_exported_magnitudes
from lora_one.models import add_lora_adapters, load_model, load_tokenizer
from lora_one.models.adapters import ADAPTER, untie_adapted_weights
from lora_one.models.full_finetune import is_full_finetuning, train_every_weight
from lora_one.models.loading import name_base_model
from lora_one.models.model_card import base_model_record, write_model_card
from lora_one.provenance import provenance
from lora_one.profiling import measure
from lora_one.progress import configure_console
from lora_one.run_dir import RunDirError, RunDirLock, storage_failure, write_json, writing
from lora_one.tracking import Tracker, check_tracking_config, sweep_group
from lora_one.train import build_optimizer, build_scheduler, evaluate_loss, train
from lora_one.train.loop import NonFiniteLoss, TrainState
from lora_one.train.overfit import report_overfit
from lora_one.train.preemption import PreemptionSignal

log = logging.getLogger("run_exp")


def init_adapters(cfg: DictConfig, method: InitMethod, model, eval_loader, init_batches, accelerator: Accelerator,
                  init_dir: str):
    """Wrap with adapters and initialise them: PEFT's own inits (LoRA, gaussian, PiSSA) while wrapping,
    the data-driven ones (LoRA-One, LoRA-GA, EVA) right after; the time and memory cover both, so all
    methods compare fairly. Returns the model and what results.json reports about the init.
    Full fine-tuning (peft=none): no adapters, no init; every weight trains from its pretrained value."""
    eval_loss_base = evaluate_loss(model, eval_loader, accelerator)
    if is_full_finetuning(cfg.peft):
        log.info("full fine-tuning: no adapters, every weight trains")
        return train_every_weight(model), {"init_method": None, "init_time_s": 0.0, "init_peak_mem_mb": None,
                                           "init_layers": {}, "rank_pattern": {}, "eval_loss_base": eval_loss_base,
                                           "eval_loss_after_init": eval_loss_base}
    log.info("starting the %s init", method.name)
    with measure(accelerator.device) as init_usage:
        model = add_lora_adapters(model, cfg.peft, cfg.model.type, method, cfg.init)
        report = method.initialise(model, cfg.init, init_batches, accelerator, cfg.model.type == "seq2seq")
    log.info("init %s: %.2f s, peak %.0f MB", method.name, init_usage.seconds, init_usage.peak_mem_mb)
    eval_loss_init = evaluate_loss(model, eval_loader, accelerator)
    log.info("eval loss: base %.4f → after init %.4f", eval_loss_base, eval_loss_init)
    if accelerator.is_main_process:
        if cfg.init.save_artifacts:
            save_init_artifacts(init_dir, report.gradients, init_batches or [], model)
        elif method.moves_base:  # needed to export the trained adapter against the original base, and to resume
            save_initial_adapter(model, os.path.join(init_dir, "adapter"))
    rank_pattern = dict(model.peft_config[ADAPTER].rank_pattern)  # per-layer ranks an init chose (EVA, rho > 1)
    return model, {"init_method": method.name, "init_time_s": init_usage.seconds, "init_peak_mem_mb": init_usage.peak_mem_mb,
                   "init_layers": report.layer_stats, "rank_pattern": rank_pattern,
                   "eval_loss_base": eval_loss_base, "eval_loss_after_init": eval_loss_init, **report.extra}


def rebuild_adapters(cfg: DictConfig, method: InitMethod, model, checkpoint: str, accelerator: Accelerator, init_dir: str):
    """Wrap with adapters for a resumed run, skipping the init: the adapter values come from the
    checkpoint (so PEFT's plain init suffices, no PiSSA SVD); an init that moved the base is redone
    from the initial adapter. Returns the model and the init report saved with the checkpoint.
    Full fine-tuning: the checkpoint holds every weight."""
    run_info = read_run_info(checkpoint)
    log.info("resuming from %s: init skipped", checkpoint)
    if is_full_finetuning(cfg.peft):
        return train_every_weight(model), run_info
    model = add_lora_adapters(model, cfg.peft, cfg.model.type, METHODS["LoRA"], cfg.init, run_info.get("rank_pattern"))
    if method.moves_base:
        initial = os.path.join(run_dir_of(checkpoint), "init", "adapter")
        check_initial_adapter(initial)
        redo_base_offset(model, initial)
        if accelerator.is_main_process and os.path.abspath(initial) != os.path.abspath(os.path.join(init_dir, "adapter")):
            shutil.copytree(initial, os.path.join(init_dir, "adapter"), dirs_exist_ok=True)
    return model, run_info


def run(cfg: DictConfig, out_dir: str, wandb_group: str | None = None) -> dict:
    """Train and evaluate in `out_dir`, or continue there from a checkpoint (`cfg.resume`), skipping the init."""
    start_time = time.time()
    configure_console(cfg.verbose)  # quiet unless verbose: no library deprecation warnings, no wandb banner
    validate_config(cfg)
    check_checkpoint_config(cfg)
    check_tracking_config(cfg.wandb)
    state = PartialState(cpu=not torch.cuda.is_available())
    accelerator = Accelerator(cpu=state.device.type == "cpu",
                              gradient_accumulation_steps=accumulation_steps(cfg.model, state.num_processes))
    out_dir = broadcast_object_list([out_dir])[0]  # each process composed its own run dir: use the main one's
    resume_from = checkpoint_to_resume(str(cfg.resume), out_dir)
    earlier = recorded_training(resume_from, str(cfg.resume), out_dir)  # the checkpoint continued, or a finished run here
    if earlier is not None:
        earlier.check_config(cfg)
    tracker = Tracker(cfg, out_dir, accelerator.is_main_process, wandb_group)
    set_seed(cfg.seed)
    seq2seq = cfg.model.type == "seq2seq"

    # --- data: (prompt, response) pairs → token ids with the prompt masked out of the labels
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    data = prepare_data(cfg.dataset, cfg.seed, tokenizer, cfg.model.max_length, seq2seq)  # rows lost are counted
    train_examples, train_set, eval_set = data.train_examples, data.train_set, data.eval_set
    data_digest = training_data_digest(cfg.dataset, train_examples)  # a resume on changed data is refused
    if earlier is not None:
        earlier.check_data(data_digest)
    collate = make_collator(tokenizer)
    eval_items = load_evaluator_items(cfg.eval)  # the benchmarks' questions, checked before any training
    eval_loader = accelerator.prepare(DataLoader(eval_set, batch_size=cfg.model.per_device_batch_size, collate_fn=collate))
    method = init_method(cfg.init)
    init_batches = None
    if method.needs_batches:
        init_set = train_set if cfg.init.max_length == cfg.model.max_length else \
            encode_rows(tokenizer, train_examples, cfg.init.max_length, seq2seq)
        init_batches = make_batches(tokenizer, init_set, cfg.init.bsz, method.batch_count(cfg.init))

    # --- base model with adapters: initialised (first launch) or rebuilt to resume from a checkpoint
    model = load_model(cfg.model, tokenizer, cfg.cache_dir).to(accelerator.device)
    init_dir = os.path.join(out_dir, "init")
    diagnostics = alignment_diagnostics(cfg, model, lambda: make_batches(tokenizer, train_set, cfg.diagnostics.bsz,
                                                                         cfg.diagnostics.iters), accelerator)
    if resume_from is None:
        model, run_info = init_adapters(cfg, method, model, eval_loader, init_batches, accelerator, init_dir)
        tracker.log_init(run_info["init_layers"], run_info["init_time_s"], run_info["init_peak_mem_mb"])
    else:
        model, run_info = rebuild_adapters(cfg, method, model, resume_from, accelerator, init_dir)
    if diagnostics and resume_from is None:
        tracker.log(diagnostics.measure(model, 0), step=0)

    # --- training, with a checkpoint every `checkpoint.every_n_steps`, at the end, and on a preemption signal
    shuffle = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train_set, batch_size=cfg.model.per_device_batch_size, shuffle=True, collate_fn=collate,
                              generator=shuffle)
    optimizer = build_optimizer(model, cfg.optim, cfg.model)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.gradient_accumulation_steps)
    total_steps = cfg.model.max_steps if cfg.model.max_steps >= 0 else cfg.model.epochs * steps_per_epoch
    history = TrainState()
    # from here until results.json is written, a signal (Ctrl-C too) never loses the training
    preemption = PreemptionSignal(resume_command(out_dir, __file__))
    if total_steps > 0:
        scheduler = build_scheduler(optimizer, cfg.model, total_steps)
        if resume_from is not None:
            history = load_checkpoint(resume_from, model, optimizer, scheduler, shuffle, accelerator)
            log.info("continuing at step %d of %d", history.step, total_steps)
            if diagnostics:
                diagnostics.continue_from(history.alignment)  # the points measured before the checkpoint
        if accelerator.is_main_process:
            set_aside_checkpoints(out_dir, resume_from)  # an earlier run's, unless this run continues them

        def after_step(now: TrainState, stopping: bool) -> None:
            tracker.log({"train/loss": now.loss[-1], "train/lr": now.lr[-1], "train/grad_norm": now.grad_norm[-1],
                         "train/tokens_per_s": now.tokens_per_s}, step=now.step)
            if cfg.eval_loss_every and now.step % cfg.eval_loss_every == 0 and now.step < total_steps:
                now.eval_loss.append([now.step, evaluate_loss(model, eval_loader, accelerator)])
                tracker.log({"eval/loss": now.eval_loss[-1][1]}, step=now.step)
            if diagnostics and now.step % cfg.diagnostics.alignment_every == 0:
                tracker.log(diagnostics.measure(accelerator.unwrap_model(model), now.step), step=now.step)
            every = cfg.checkpoint.every_n_steps
            if stopping or (every > 0 and (now.step % every == 0 or now.step == total_steps)):
                checkpoint(now)

        def checkpoint(now: TrainState) -> None:
            if diagnostics:
                now.alignment = diagnostics.points()  # carried to a resumed run's results
            save_checkpoint(out_dir, model, optimizer, scheduler, now, shuffle, accelerator, run_info,
                            cfg.checkpoint.keep, training_config(cfg), data_digest)
            checkpointed.append(now.step)

        checkpointed: list[int] = []
        history = train(model, optimizer, scheduler, train_loader, accelerator, total_steps, cfg.optim.max_grad_norm,
                        shuffle, history, after_step, preemption.requested, cfg.log_every)
        if history.interrupted:  # the checkpoint is written: requeue (slurm), or say how to continue, and exit
            tracker.finish()
            preemption.hand_over(accelerator.is_main_process)

    def stop_if_preempted() -> None:
        """Between the stages after training: on a signal, checkpoint the finished training (unless its
        last step has one), requeue and exit; the relaunch skips to the evaluation."""
        if signalled_anywhere(preemption, accelerator):
            if total_steps > 0 and history.step not in checkpointed:
                checkpoint(history)
            tracker.finish()
            preemption.hand_over(accelerator.is_main_process)

    eval_loss_final = evaluate_loss(model, eval_loader, accelerator) if total_steps > 0 else run_info["eval_loss_after_init"]
    stop_if_preempted()

    # --- save: the adapter (PEFT format, always against the original base) and the merged model;
    # full fine-tuning: the trained model itself in merged/, always (it has no adapter to save instead)
    trained = accelerator.unwrap_model(model)
    full_finetuning = is_full_finetuning(cfg.peft)
    parameters = {"trainable_params": sum(p.numel() for p in trained.parameters() if p.requires_grad),
                  "total_params": sum(p.numel() for p in trained.parameters())}  # counted before a merge folds the adapters away
    if accelerator.is_main_process:
        if not full_finetuning:
            conversion = os.path.join(init_dir, "adapter") if method.moves_base else None
            with writing(os.path.join(out_dir, "adapter")):  # an unwritable file: one line, not safetensors' traceback
                trained.save_pretrained(os.path.join(out_dir, "adapter"), path_initial_model_for_weight_conversion=conversion)
            if conversion:
                restore_exported_magnitudes(trained, os.path.join(out_dir, "adapter"))  # DoRA: PEFT's conversion drops m
            name_base_model(os.path.join(out_dir, "adapter"), cfg.model)  # the hub id, not this machine's cache path
        if cfg.model.saving or full_finetuning:
            if not full_finetuning:
                untie_adapted_weights(trained)  # a tied output head merges into its own copy, not the embeddings
            merged = trained if full_finetuning else trained.merge_and_unload()
            with writing(os.path.join(out_dir, "merged")):
                merged.save_pretrained(os.path.join(out_dir, "merged"))
                tokenizer.save_pretrained(os.path.join(out_dir, "merged"))
    accelerator.wait_for_everyone()
    stop_if_preempted()

    # --- results
    resolved = OmegaConf.to_container(cfg, resolve=True)
    results = {
        "config": resolved,
        "config_digest": hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16],
        "num_processes": accelerator.num_processes,
        "training_data": data_digest,  # the file's sha256 (or the loaded rows'): a relaunch on other data is refused
        "data": data.report,  # rows read, duplicates, rows dropped or truncated at model.max_length
        **parameters,
        **run_info,
        "eval_loss": eval_loss_final,
        # the held-out loss over training: after the init (step 0), every `eval_loss_every` steps, at the end
        "eval_loss_curve": [[0, run_info["eval_loss_after_init"]], *history.eval_loss,
                            *([[history.step, eval_loss_final]] if total_steps > 0 else [])],
        "train_loss_curve": history.loss,
        "lr_curve": history.lr,
        "grad_norm_curve": history.grad_norm,
        "final_train_loss": history.loss[-1] if history.loss else None,
        "steps": history.step,
        "train_time_s": history.train_seconds,
        "tokens_per_s": history.tokens_per_s if history.step else None,
        "resumed_from": resume_from,
        "base_model": base_model_record(cfg.model, trained.name_or_path),  # what the weights trained on really were
        **finish_diagnostics(diagnostics, out_dir, accelerator.is_main_process),
    }
    # benchmarks chosen by conf/eval on the trained model: <task>_predictions.jsonl here, metrics under "eval"
    results["eval"], eval_failure = run_evaluators(cfg.eval, eval_items, trained, tokenizer, accelerator, out_dir,
                                                   before_each=stop_if_preempted)
    results["provenance"] = provenance(start_time)  # code version, packages, device, start/end times
    if accelerator.is_main_process:
        write_json(os.path.join(out_dir, "results.json"), results)
        if not full_finetuning:  # the adapter's model card quotes the eval numbers: written with results.json
            with writing(os.path.join(out_dir, "adapter")):
                write_model_card(os.path.join(out_dir, "adapter"), cfg, results)
        log.info("eval loss %.4f after %d steps; results in %s", eval_loss_final, history.step, out_dir)
        if cfg.get("overfit_check"):  # debug=overfit: its verdict, the run's last line
            report_overfit(history.loss, cfg.overfit_check)
        if not (cfg.checkpoint.keep_final or eval_failure):  # a failed benchmark: a relaunch resumes to redo it
            remove_checkpoints(out_dir)
    preemption.restore()
    tracker.finish(results)
    if eval_failure:
        raise EvaluationError(f"{eval_failure}; the training's results are in {out_dir}/results.json")
    return results


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
    except (ConfigError, RunDirError, NonFiniteLoss, EvaluationError) as err:  # one line naming the culprit, no traceback
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
