"""Benchmark 1: wall time of the one-step-gradient init on SmolLM2-135M (peft=all, r=8, 8 micro-batches
of 256 GSM8K tokens) over the floor: a plain forward+backward of the same batches with every weight
frozen (activation gradients only). Methods run side by side, interleaved, in one process.

    streaming           one checkpointed backward, each G factorised (full SVD) when complete
    streaming lowrank   the same with torch.svd_lowrank(q=4k, niter=4)
    exact               all gradients accumulated + full SVD (the reference)
    official            all gradients accumulated + torch.svd_lowrank(q=512, niter=16), as the official code
    sketch              init.estimator=sketch (never forms G)

Target: streaming ≤ 1.3 × floor (issue 10; sketch ≤ 1.2, issue 6).

    python bench/init_time.py [--repeats 1] [--methods streaming exact]
"""
import time

import torch
from accelerate import Accelerator
from omegaconf import OmegaConf

from common import INIT_VARIANTS, init_bench_parser, report, run_init, smollm2_lora
from lora_one.init.estimators.shared import activations_require_grad, backpropagate, frozen_pretrained


def floor(model, batches, accelerator):
    """Forward + backward of the init batches through the frozen pretrained model."""
    with frozen_pretrained(model), activations_require_grad(model):
        backpropagate(model, batches, accelerator, "floor: frozen forward+backward")


def main():
    parser = init_bench_parser(__doc__, "sketch oversampling values to time (default: the config's)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds of every method")
    parser.add_argument("--methods", nargs="+", default=list(INIT_VARIANTS), choices=list(INIT_VARIANTS))
    args = parser.parse_args()
    cfg, _, model, batches, _ = smollm2_lora(micro_batches=args.micro_batches)
    accelerator = Accelerator(cpu=True)
    runs = {"floor": lambda: floor(model, batches, accelerator)}
    for method in args.methods:
        variants = {method: {}} if method != "sketch" else \
            {f"sketch p={p}": {"oversampling": p} for p in args.oversampling or [cfg.init.oversampling]}
        for name, extra in variants.items():
            init_cfg = OmegaConf.merge(cfg.init, INIT_VARIANTS[method], extra)
            runs[name] = lambda init_cfg=init_cfg: run_init(model, init_cfg, batches, accelerator)
    floor(model, batches[:1], accelerator)  # warm-up: first-call allocations and kernel selection
    seconds = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    base = min(seconds["floor"])
    rows = [[name, min(times), min(times) / base, len(times)] for name, times in seconds.items()]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    summary = {"micro_batches": len(batches), "tokens": tokens, "threads": torch.get_num_threads(),
               "target_streaming_over_floor": 1.3, "target_sketch_over_floor": 1.2,
               **{f"{name} over floor": min(times) / base for name, times in seconds.items() if name != "floor"}}
    report("init_time", ["method", "seconds (min)", "× floor", "repeats"], rows, summary)


if __name__ == "__main__":
    main()
