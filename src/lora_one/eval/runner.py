"""Run benchmarks by name: load the questions, answer them with the model (or read answers from a
file), score on the main process, write `<task>_predictions.jsonl` (GLUE: `cola_predictions.jsonl`...),
and share the metrics."""
import logging
import os
import time
from typing import Callable

from accelerate.utils import broadcast_object_list

from lora_one import ConfigError
from lora_one.eval.benchmark import BENCHMARKS, Benchmark
from lora_one.eval.records import write_records

log = logging.getLogger(__name__)


def benchmark_named(task: str) -> Benchmark:
    """The benchmark `task` names, or one ConfigError listing the known ones."""
    if task not in BENCHMARKS:
        raise ConfigError(f"eval task '{task}' is unknown; use some of {sorted(BENCHMARKS)}")
    return BENCHMARKS[task]


def predictions_path(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, f"{name}_predictions.jsonl")


class EvaluationError(Exception):
    """A benchmark failed after training; the training's results are written all the same."""


def run_benchmark(task: str, cfg, out_dir: str, model=None, tokenizer=None, accelerator=None,
                  predictions: str | None = None, items: list[dict] | None = None) -> dict:
    """Metrics of one benchmark: of the model's answers, or of the completions in `predictions`; on
    `items` when they were loaded already, else on those its config names."""
    benchmark = benchmark_named(task)
    start = time.perf_counter()
    items = benchmark.load_items(cfg) if items is None else items
    log.info("%s: %d questions…", task, len(items))  # its progress follows (lora_one.progress), then its metrics
    if predictions:
        metrics, records = benchmark.score_file(cfg, items, predictions)
    else:
        metrics, records = benchmark.evaluate(cfg, items, model, tokenizer, accelerator)
    if records is not None:  # the main process
        write_records(predictions_path(out_dir, benchmark.output_name(cfg)), records)
        metrics["seconds"] = time.perf_counter() - start
        log.info("%s: %s", task, {k: v for k, v in metrics.items() if not isinstance(v, dict)})
    if accelerator is not None and accelerator.num_processes > 1:
        metrics = broadcast_object_list([metrics])[0]
    return metrics


def check_eval_config(eval_cfg) -> None:
    """Before any work: every configured benchmark is known and its settings pass its own check
    (e.g. HumanEval's opt-in to run model code, GLUE's task matching the dataset)."""
    for task in eval_cfg:
        benchmark_named(task).check_config(eval_cfg[task])


def load_evaluator_items(eval_cfg) -> dict[str, list[dict]]:
    """Every configured benchmark's questions, read before training starts: a missing, empty or
    malformed file stops the run before its first step instead of after its last."""
    items = {task: benchmark_named(task).load_items(eval_cfg[task]) for task in eval_cfg}
    for task, questions in items.items():
        if not questions:
            raise ConfigError(f"eval.{task}: no questions to score (check its data file and settings)")
    return items


def run_evaluators(eval_cfg, items: dict[str, list[dict]], model, tokenizer, accelerator, out_dir: str,
                   before_each: Callable[[], None] = lambda: None) -> tuple[dict, str | None]:
    """Every benchmark configured under `eval` (conf/eval), in order, on its loaded `items`:
    ({task: metrics}, None), or, when some fail, their metrics as {"error": ...} and the first failure
    in words; the others still run, so a late error never costs the results of the training.
    `before_each()` runs before each benchmark (run_exp: stop there on a preemption signal)."""
    metrics, failure = {}, None
    for task in eval_cfg:
        before_each()
        try:
            metrics[task] = run_benchmark(task, eval_cfg[task], out_dir, model, tokenizer, accelerator,
                                          items=items[task])
        except Exception as err:  # noqa: BLE001 (any failure: the training's results must still be written)
            log.exception("eval %s failed", task)
            metrics[task] = {"error": f"{type(err).__name__}: {err}"}
            failure = failure or f"eval {task} failed ({type(err).__name__}: {err})"
    return metrics, failure
