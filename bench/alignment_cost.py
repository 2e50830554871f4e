"""Benchmark: cost of the alignment diagnostics during training, on SmolLM2-135M (peft=all, r=8:
210 adapted layers, GSM8K batches of 4 × 256 tokens, AdamW). Optimizer steps and diagnostics
measurements are timed interleaved in one process; the overhead at `diagnostics.alignment_every=N`
is one measurement per N steps: t_measure / (N · t_step). Target: ≤ 2 % at N = 10.

The references are random orthonormal U_r, V_r of each layer's shapes: a measurement costs the same
whatever their values (QR of B and Aᵀ, an r×r SVD against each, two r×r Gram products), and the
real ones need G (minutes of SVDs on a CPU), which is an init-time cost, not a training one.

    python bench/alignment_cost.py [--steps 6] [--every 10]
"""
import argparse
import time

import torch
from accelerate import Accelerator

from common import report, smollm2_lora
from lora_one.diagnostics import AlignmentDiagnostics
from lora_one.models import lora_layers
from lora_one.models.adapters import ADAPTER
from lora_one.train import build_optimizer


def random_references(model) -> dict:
    generator = torch.Generator().manual_seed(0)
    references = {}
    for name, layer in lora_layers(model).items():
        (m, r), n = layer.lora_B[ADAPTER].weight.shape, layer.lora_A[ADAPTER].weight.shape[1]
        references[name] = (torch.linalg.qr(torch.randn(m, r, generator=generator))[0],
                            torch.linalg.qr(torch.randn(n, r, generator=generator))[0])
    return references


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps (each followed by a measurement)")
    parser.add_argument("--every", type=int, default=10, help="N of diagnostics.alignment_every")
    args = parser.parse_args()
    cfg, _, model, _, eval_batches = smollm2_lora(micro_batches=0)
    train_batches = [b for b in eval_batches if b["input_ids"].shape[0] == 4]
    optimizer = build_optimizer(model, cfg.optim, cfg.model)
    diagnostics = AlignmentDiagnostics(random_references(model))
    accelerator = Accelerator(cpu=True)
    model.train()
    step_seconds, measure_seconds = [], []
    for i in range(args.steps + 1):  # the first round warms up, untimed
        batch = train_batches[i % len(train_batches)]
        start = time.perf_counter()
        accelerator.backward(model(**batch).loss)
        optimizer.step()
        optimizer.zero_grad()
        middle = time.perf_counter()
        diagnostics.measure(model, i)
        end = time.perf_counter()
        if i:
            step_seconds.append(middle - start)
            measure_seconds.append(end - middle)
    step, measure = sorted(step_seconds)[len(step_seconds) // 2], sorted(measure_seconds)[len(measure_seconds) // 2]
    overhead = measure / (args.every * step)
    rows = [["optimizer step", step, len(step_seconds)], ["alignment measurement", measure, len(measure_seconds)]]
    summary = {"layers": len(lora_layers(model)), "tokens per step": int(train_batches[0]["attention_mask"].sum()),
               "threads": torch.get_num_threads(), "every": args.every,
               "overhead (measure / (every × step))": overhead, "target": 0.02}
    report("alignment_cost", ["what", "seconds (median)", "n"], rows, summary)


if __name__ == "__main__":
    main()
