"""Benchmark: cost of `init.stable_gamma=auto` over the fixed-γ LoRA-One init, on SmolLM2-135M
(peft=all, r=8, GSM8K micro-batches of 256 tokens, the default streaming estimator). Both inits run
on the same G batches, side by side, interleaved, in one process; auto also runs its line search
(forward passes of the held-out search batches at every grid point). Target: ≤ 1.5×.

    python bench/gamma_auto.py [--micro-batches 8] [--search-batches 1] [--points 12] [--repeats 1]
"""
import time

import torch
from accelerate import Accelerator
from omegaconf import OmegaConf

from common import compose_config, init_bench_parser, report, run_init, smollm2_lora


def main():
    parser = init_bench_parser(__doc__)
    parser.add_argument("--search-batches", type=int, default=None, help="default: the config's gamma_search.batches")
    parser.add_argument("--points", type=int, default=None, help="default: the config's gamma_search.points")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds of both inits")
    args = parser.parse_args()
    overrides = [f"init.gamma_search.{k}={v}"
                 for k, v in (("batches", args.search_batches), ("points", args.points)) if v]
    search = compose_config(overrides).init.gamma_search
    cfg, _, model, all_batches, _ = smollm2_lora(overrides, micro_batches=args.micro_batches + search.batches)
    batches = all_batches[: args.micro_batches]  # G's; the search's are the next ones (each micro-batch: 1 example)
    fixed_cfg = OmegaConf.merge(cfg.init, {"iters": args.micro_batches})
    auto_cfg = OmegaConf.merge(fixed_cfg, {"stable_gamma": "auto"})
    accelerator = Accelerator(cpu=True)
    runs = {"fixed γ": lambda: run_init(model, fixed_cfg, batches, accelerator),
            "auto": lambda: run_init(model, auto_cfg, all_batches, accelerator)}
    with torch.no_grad():
        model(**batches[0])  # warm-up: first-call allocations
    seconds = {name: [] for name in runs}
    chosen = None
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            result = run()
            seconds[name].append(time.perf_counter() - start)
            if name == "auto":
                chosen = result.extra["gamma_search"]
    fixed, auto = min(seconds["fixed γ"]), min(seconds["auto"])
    rows = [[name, min(times), min(times) / fixed, len(times)] for name, times in seconds.items()]
    summary = {"G micro-batches": len(batches), "search micro-batches": search.batches, "grid points": search.points,
               "tokens per micro-batch": int(batches[0]["attention_mask"].sum()), "threads": torch.get_num_threads(),
               "search_time_s": chosen["search_time_s"], "chosen_gamma": chosen["chosen_gamma"],
               "auto over fixed": auto / fixed, "target": 1.5}
    report("gamma_auto", ["init", "seconds (min)", "× fixed", "repeats"], rows, summary)


if __name__ == "__main__":
    main()
