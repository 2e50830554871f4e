"""Benchmarks of a trained model: GSM8K, HumanEval (sandboxed, lora_one.sandbox), commonsense reasoning, MMLU,
GLUE, and lm-evaluation-harness tasks, one module per benchmark, found by name in BENCHMARKS. Standalone through
`lora-one-eval <task>` (or eval/<task>.py), or after training through the `eval` config group of run_exp.py."""
# Each module registers its benchmark: BENCHMARKS in this (alphabetical) order, the one `lora-one-eval --help` lists.
from lora_one.eval import commonsense, glue, gsm8k, humaneval, lm_eval_harness, mmlu  # noqa: F401
from lora_one.eval.benchmark import BENCHMARKS, Benchmark
from lora_one.eval.runner import EvaluationError, load_evaluator_items, run_benchmark, run_evaluators

__all__ = ["BENCHMARKS", "Benchmark", "EvaluationError", "load_evaluator_items", "run_benchmark", "run_evaluators"]
