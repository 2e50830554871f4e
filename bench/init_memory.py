"""Benchmark 2: peak memory of each one-step-gradient init over the peak of one LoRA training step
(forward, backward, AdamW step) on the same micro-batch, SmolLM2-135M, peft=all, r=8, 8 micro-batches
of 256 GSM8K tokens. Each measurement runs in a fresh process (the CPU allocator keeps freed pages,
so a shared process would carry one method's peak into the next).

On CPU the peak is the process's resident set (model included), sampled every 10 ms; on CUDA the
peak allocated by torch. The increment above the loaded model is reported too.
Targets: streaming ≤ 1.05 × the training step (issue 10), sketch ≤ 1.05 (issue 6).

    python bench/init_memory.py
"""
import argparse
import json
import subprocess
import sys

import psutil
import torch
from accelerate import Accelerator
from omegaconf import OmegaConf

from common import INIT_VARIANTS, init_bench_parser, report, run_init, smollm2_lora
from lora_one.profiling import measure
from lora_one.train import build_optimizer


def lora_step(model, cfg, batch):
    model.train()
    optimizer = build_optimizer(model, cfg.optim, cfg.model)
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def worker(method: str, micro_batches: int) -> None:
    cfg, _, model, batches, _ = smollm2_lora(micro_batches=micro_batches)
    accelerator = Accelerator()
    device = accelerator.device
    model.to(device)
    before = (psutil.Process().memory_info().rss / 2**20 if device.type == "cpu"
              else torch.cuda.memory_allocated() / 2**20)
    with measure(device) as usage:
        if method == "lora_step":
            lora_step(model, cfg, {k: v.to(device) for k, v in batches[0].items()})
        else:
            run_init(model, OmegaConf.merge(cfg.init, INIT_VARIANTS[method]), batches, accelerator)
    print(json.dumps({"method": method, "before_mb": before, "peak_mb": usage.peak_mem_mb, "seconds": usage.seconds}))


def main():
    parser = init_bench_parser(__doc__)
    parser.add_argument("--worker", choices=["lora_step", *INIT_VARIANTS], help=argparse.SUPPRESS)
    parser.add_argument("--methods", nargs="+", default=list(INIT_VARIANTS), choices=list(INIT_VARIANTS))
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.micro_batches)
    measured = {}
    for method in ["lora_step", *args.methods]:
        command = [sys.executable, __file__, "--worker", method, "--micro-batches", str(args.micro_batches)]
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        measured[method] = json.loads(out.stdout.strip().splitlines()[-1])
    step = measured["lora_step"]
    rows = [[m, r["before_mb"], r["peak_mb"], r["peak_mb"] - r["before_mb"], r["peak_mb"] / step["peak_mb"]]
            for m, r in measured.items()]
    over_step = {f"{m}_over_lora_step": r["peak_mb"] / step["peak_mb"] for m, r in measured.items() if m != "lora_step"}
    memory = "CPU resident set" if not torch.cuda.is_available() else "CUDA max allocated"
    summary = {**over_step, "target": 1.05, "micro_batches": args.micro_batches, "memory": memory}
    report("init_memory", ["method", "before MB", "peak MB", "increment MB", "peak / LoRA step peak"], rows, summary)


if __name__ == "__main__":
    main()
