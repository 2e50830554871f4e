"""Benchmark: training-step time of scaled_adamw and lora_pro over adamw's, and their memory, on SmolLM2-135M
(peft=all, r=8) with real GSM8K micro-batches. Targets: scaled_adamw ≤ 1.10, lora_pro ≤ 1.5.

A step is what the training loop does per optimizer step: forward, backward, clip, optimizer.step,
zero_grad, on one micro-batch of `--batch-size` examples × `--tokens` tokens (no accumulation: the
optimizer's share of a step is then the largest). The optimizers take turns on the same model, step by
step for `--rounds` rounds after one untimed warm-up step each, so machine load hits all alike; the
ratios are of the median step times. Memory: each optimizer's state (exact), and the peak of its first
step (CUDA: torch's peak allocation; CPU: the process's peak RSS, which also holds the earlier states).

    python bench/bench_optimizers.py [--rounds 5] [--batch-size 4] [--tokens 256]
"""
import argparse
import statistics
import time

import torch

from common import compose_config, report, smollm2_lora
from lora_one.profiling import measure
from lora_one.train import build_optimizer

OPTIMIZERS = ["adamw", "scaled_adamw", "lora_pro"]
TARGETS = {"scaled_adamw": 1.10, "lora_pro": 1.5}


def state_mb(optimizer: torch.optim.Optimizer) -> float:
    return sum(t.nbytes for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)) / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per optimizer")
    parser.add_argument("--batch-size", type=int, default=4, help="examples per micro-batch (model default: 4)")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per example (model default: 256)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg, _, model, examples, _ = smollm2_lora(micro_batches=args.batch_size, tokens=args.tokens)
    batch = {k: torch.cat([e[k] for e in examples]).to(device) for k in examples[0]}
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizers = {name: build_optimizer(model, compose_config([f"optim={name}"]).optim, cfg.model)
                  for name in OPTIMIZERS}

    def train_step(optimizer) -> tuple[float, float]:
        """(seconds of the whole step, seconds of optimizer.step)."""
        start = time.perf_counter()
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
        if device.type == "cuda":
            torch.cuda.synchronize()
        step_start = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        end = time.perf_counter()
        return end - start, end - step_start

    peaks = {}
    for name, optimizer in optimizers.items():  # warm-up: allocates each optimizer's state
        with measure(device) as usage:
            train_step(optimizer)
        peaks[name] = usage.peak_mem_mb
    times = {name: [] for name in OPTIMIZERS}
    for _ in range(args.rounds):
        for name, optimizer in optimizers.items():
            times[name].append(train_step(optimizer))
    median = {name: (statistics.median(t for t, _ in ts), statistics.median(s for _, s in ts))
              for name, ts in times.items()}
    base = median["adamw"][0]
    rows = [[name, median[name][0], median[name][1], median[name][0] / base, state_mb(optimizers[name]), peaks[name]]
            for name in OPTIMIZERS]
    summary = {"device": str(device), "micro_batch": f"{args.batch_size} x {args.tokens} tokens",
               "rounds": args.rounds,
               "adapted_params": sum(p.numel() for p in params),
               **{f"{name}_ratio": median[name][0] / base for name in TARGETS},
               **{f"{name}_meets_target": median[name][0] / base <= target for name, target in TARGETS.items()}}
    report("bench_optimizers", ["optim", "step s (median)", "optimizer.step s", "step / adamw", "state MB",
                                "peak MB (1st step)"], rows, summary)


if __name__ == "__main__":
    main()
