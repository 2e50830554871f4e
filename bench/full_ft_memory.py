"""Full fine-tuning's cost over LoRA's: the peak memory and the time of a training step (forward,
backward, clipping, AdamW step) through run_exp's training loop, for `peft=none` (every weight, AdamW
moments of all 135M) against LoRA r=8 on `peft=qv` and `peft=all`; SmolLM2-135M-Instruct fp32, batches
of 4 GSM8K examples of exactly 64 tokens, the same batches for every method. Each method runs in a
fresh process (the CPU allocator keeps freed pages, so a shared process would carry one method's peak
into the next); the peak covers every step, the first (which allocates the AdamW moments) included.
The step time is the median over the steps after the first, in wall-clock seconds and in the process's
CPU seconds (on a shared machine the CPU time is the steadier: it does not count the time other jobs
held the core); with --rounds > 1 the methods alternate and each keeps its fastest round.

On CPU the peak is the process's resident set (model included), sampled every 10 ms; on CUDA the
peak allocated by torch. Run with OMP_NUM_THREADS=1 on a shared CPU.

    OMP_NUM_THREADS=1 python bench/full_ft_memory.py [--steps 5] [--rounds 1]
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

import psutil
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from common import GSM8K_TRAIN, report
from lora_one.config import compose_config
from lora_one.data import encode_rows, load_splits, make_collator
from lora_one.init import init_method
from lora_one.models import add_lora_adapters, load_model, load_tokenizer
from lora_one.models.full_finetune import is_full_finetuning, train_every_weight
from lora_one.profiling import measure
from lora_one.train import build_optimizer, build_scheduler, train

METHODS = {"full FT (peft=none)": "none", "LoRA peft=qv": "qv", "LoRA peft=all": "all"}
FULL = "full FT (peft=none)"


def training_setup(peft: str, batch_size: int, tokens: int, steps: int):
    """(cfg, model ready to train, loader of `steps` batches of `batch_size` examples of exactly
    `tokens` tokens), built as run_exp builds them."""
    cfg = compose_config(["model=smollm2_135m", "dataset=gsm8k", f"dataset.path={GSM8K_TRAIN}",
                          "dataset.max_train_samples=2000", "dataset.eval_size=16", f"peft={peft}", "init=default",
                          f"model.per_device_batch_size={batch_size}", f"model.real_batch_size={batch_size}"])
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    examples, _ = load_splits(cfg.dataset, cfg.seed)
    exact = [e for e in encode_rows(tokenizer, examples, tokens, seq2seq=False) if len(e["input_ids"]) == tokens]
    loader = DataLoader(exact[: batch_size * steps], batch_size=batch_size, collate_fn=make_collator(tokenizer))
    model = load_model(cfg.model, tokenizer, cfg.cache_dir)
    if is_full_finetuning(cfg.peft):
        model = train_every_weight(model)
    else:
        model = add_lora_adapters(model, cfg.peft, cfg.model.type, init_method(cfg.init), cfg.init)
    return cfg, model, loader


def worker(peft: str, batch_size: int, tokens: int, steps: int) -> None:
    cfg, model, loader = training_setup(peft, batch_size, tokens, steps)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    optimizer = build_optimizer(model, cfg.optim, cfg.model)
    model, optimizer, loader = accelerator.prepare(model.to(accelerator.device), optimizer, loader)
    scheduler = build_scheduler(optimizer, cfg.model, steps)
    device = accelerator.device
    before = (psutil.Process().memory_info().rss / 2**20 if device.type == "cpu"
              else torch.cuda.memory_allocated() / 2**20)
    clocks = [(time.perf_counter(), time.process_time())]  # (wall, CPU) at the start and after each step
    with measure(device) as usage:
        train(model, optimizer, scheduler, loader, accelerator, steps, cfg.optim.max_grad_norm, torch.Generator(),
              callbacks=[lambda now, stopping: clocks.append((time.perf_counter(), time.process_time()))])
    wall, cpu = ([b - a for a, b in zip(ticks, ticks[1:])] for ticks in zip(*clocks))
    print(json.dumps({"before_mb": before, "peak_mb": usage.peak_mem_mb, "step_s": wall, "step_cpu_s": cpu,
                      "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}))


def measure_in_fresh_process(peft: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", peft, "--steps", str(args.steps), "--batch-size",
               str(args.batch_size), "--tokens", str(args.tokens)]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"error: the {peft} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=list(METHODS.values()), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per method (the first is not timed)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the three methods, alternating")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per example")
    args = parser.parse_args()
    if args.steps < 2:
        raise SystemExit("error: --steps must be ≥ 2 (the first step is not timed)")
    if args.worker:
        return worker(args.worker, args.batch_size, args.tokens, args.steps)
    runs = {name: [] for name in METHODS}
    for round_ in range(args.rounds):
        names = list(METHODS) if round_ % 2 == 0 else list(reversed(METHODS))
        for name in names:
            runs[name].append(measure_in_fresh_process(METHODS[name], args))
    measured = {name: {"before_mb": rs[0]["before_mb"], "peak_mb": max(r["peak_mb"] for r in rs),
                       **{key: min(statistics.median(r[key][1:]) for r in rs) for key in ("step_s", "step_cpu_s")},
                       "trainable": rs[0]["trainable"]}
                for name, rs in runs.items()}
    full = measured[FULL]
    rows = [[name, m["trainable"], m["before_mb"], m["peak_mb"], m["peak_mb"] - m["before_mb"], m["step_s"],
             m["step_cpu_s"], full["peak_mb"] / m["peak_mb"], full["step_s"] / m["step_s"],
             full["step_cpu_s"] / m["step_cpu_s"]] for name, m in measured.items()]
    summary = {f"full_over_{peft}_{quantity}": full[key] / measured[name][key]
               for name, peft in METHODS.items() if name != FULL
               for quantity, key in (("peak_mem", "peak_mb"), ("step_time", "step_s"), ("step_cpu_time", "step_cpu_s"))}
    summary.update(batch=f"{args.batch_size} × {args.tokens} tokens", steps=args.steps, rounds=args.rounds,
                   torch_threads=torch.get_num_threads(),
                   memory="CUDA max allocated" if torch.cuda.is_available() else "CPU resident set, model included")
    report("full_ft_memory", ["method", "trainable params", "before MB", "peak MB", "increment MB", "step s",
                              "step CPU s", "full FT peak / this", "full FT step s / this", "full FT CPU s / this"],
           rows, summary)


if __name__ == "__main__":
    main()
