"""Benchmarks of a trained model: GSM8K, HumanEval (sandboxed), commonsense reasoning, MMLU, GLUE.
Standalone through eval/*.py, or after training through the `eval` config group of run_exp.py."""
from lora_one.eval.runner import BENCHMARKS, EvaluationError, load_evaluator_items, run_benchmark, run_evaluators

__all__ = ["BENCHMARKS", "EvaluationError", "load_evaluator_items", "run_benchmark", "run_evaluators"]
