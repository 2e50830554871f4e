"""EleutherAI's lm-evaluation-harness as a benchmark: the numbers other papers report, on the trained model.

The harness runs in-process on the model object the run trained (merged or with its PEFT adapter: no
save/reload round trip), through its own HF model class (`HFLM`, which accepts a model instance and a
tokenizer), with its task configs unchanged: prompts, few-shot sampling, answer extraction (GSM8K
strict-match and flexible-extract), normalisations (acc_norm) and metric names (`acc,none`,
`exact_match,strict-match`). Offline, each task reads local files in the hub's schema
(lora_one/eval/harness_data.py); a task without local data is refused before any work unless `hub: true`.

Under several processes the harness's own data parallelism is used: each process scores its share of the
requests and rank 0 gathers them (`HFLM`'s rank and world size set from the run's Accelerator, the "custom
distributed integration" its model-instance path leaves to the caller).

results.json gets `eval.lm_eval`: {"results": {task: {metric,filter: value}}, "n-shot", "n-samples", "versions",
"lm_eval_version", "data" (each task's source), "deviations" (what a local task's data lacks)}; the harness's
per-sample logs (each request's arguments, responses, filtered responses, target and metrics) go to
lm_eval_predictions.jsonl, one line per sample with its `task`.
"""
import json
import logging
import os
import re

from lora_one import ConfigError
from lora_one.eval.benchmark import Benchmark, register
from lora_one.eval.harness_data import DEVIATIONS, LOCAL_TASKS, local_task_config

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e \".[lm-eval]\" (or bash scripts/setup.sh)"
SUMMARY_KEYS = ("name", "alias", "sample_len", " ")  # the harness's bookkeeping beside a task's metrics
CODE_TASKS = re.compile(r"humaneval|mbpp")  # the harness's tasks that execute completions (`unsafe_code`)


def task_names(cfg) -> list[str]:
    """`tasks` as a list, a comma-separated string split (the CLI's --tasks gsm8k,boolq)."""
    tasks = [cfg.tasks] if isinstance(cfg.tasks, str) else list(cfg.tasks)
    return [name.strip() for entry in tasks for name in str(entry).split(",") if name.strip()]


def is_local(task: str, cfg) -> bool:
    return cfg.data_dir is not None and task in LOCAL_TASKS


@register
class LmEvalHarness(Benchmark):
    """EleutherAI's lm-evaluation-harness (its prompts, shots, extraction, metrics), local data offline."""

    name = "lm_eval"

    def check_config(self, cfg) -> None:
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            raise ConfigError(f"eval=lm_eval needs lm-evaluation-harness, not installed here: {INSTALL_HINT}") from None
        tasks = task_names(cfg)
        if not tasks:
            raise ConfigError("eval.lm_eval.tasks is empty; name some harness tasks, e.g. [arc_easy,piqa]")
        for task in tasks:
            if CODE_TASKS.match(task):
                raise ConfigError(f"lm_eval task '{task}' runs model-written code, which the harness does unconfined; "
                                  f"use eval=humaneval (sandboxed, lora_one.sandbox)")
            if not is_local(task, cfg) and not cfg.hub:
                where = "eval.lm_eval.data_dir is null" if cfg.data_dir is None else "it has no local data"
                raise ConfigError(f"lm_eval task '{task}' would be read from the hub ({where}; local tasks: "
                                  f"{', '.join(LOCAL_TASKS)}); set eval.lm_eval.hub=true where the hub answers")

    def load_items(self, cfg) -> list[dict]:
        """One item per task: its harness config with the local data read (None: the harness loads it by
        name from the hub)."""
        items = []
        for task in task_names(cfg):
            config = local_task_config(task, cfg.data_dir, cfg.num_fewshot) if is_local(task, cfg) else None
            items.append({"id": task, "task": task, "config": config})
        return items

    def evaluate(self, cfg, items, model, tokenizer, accelerator):
        results = run_harness(cfg, items, model, tokenizer, accelerator)
        if results is None:  # not the main process
            return None, None
        metrics = harness_metrics(cfg, items, results)
        for task, values in metrics["results"].items():
            log.info("lm_eval %s (%d-shot, %d samples): %s", task, metrics["n-shot"].get(task, 0),
                     metrics["n-samples"].get(task, 0), ", ".join(f"{key} {value:.4f}" for key, value in values.items()
                                                                   if isinstance(value, float) and "stderr" not in key))
        return metrics, harness_records(results)

    def score_file(self, cfg, items, path):
        raise ConfigError("lm_eval scores a model (log-likelihoods and its own generations), not a predictions "
                          "file; give --model (and --adapter)")


def run_harness(cfg, items: list[dict], model, tokenizer, accelerator) -> dict | None:
    """The harness's `simple_evaluate` on `model`: its whole output on the main process, None on the others."""
    from lm_eval import simple_evaluate
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    was_training = model.training
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size)
    if accelerator is not None and accelerator.num_processes > 1:
        lm._rank, lm._world_size, lm.accelerator = accelerator.process_index, accelerator.num_processes, accelerator
    tasks = [ConfigurableTask(config=item["config"]) if item["config"] else item["task"] for item in items]
    by_name = any(isinstance(task, str) for task in tasks)  # indexing the harness's ~15k task configs takes ~20 s
    try:
        results = simple_evaluate(model=lm, tasks=tasks, task_manager=TaskManager(include_defaults=by_name),
                                  num_fewshot=cfg.num_fewshot, limit=cfg.limit, log_samples=True,
                                  bootstrap_iters=cfg.bootstrap_iters)
    finally:
        model.train(was_training)
    return results


def harness_metrics(cfg, items: list[dict], results: dict) -> dict:
    """The harness's headline numbers under its own names, and what they were measured on."""
    return {
        "results": {task: {key: value for key, value in metrics.items() if key not in SUMMARY_KEYS}
                    for task, metrics in results["results"].items()},
        "n-shot": results["n-shot"],
        "n-samples": {task: counts["effective"] for task, counts in results["n-samples"].items()},
        "versions": results["versions"],
        "lm_eval_version": results.get("lm_eval_version"),
        "data": {item["task"]: os.path.normpath(item["config"]["dataset_path"]) if item["config"] else "hub"
                 for item in items},
        "deviations": {item["task"]: DEVIATIONS[item["task"]] for item in items
                       if item["config"] and item["task"] in DEVIATIONS},
    }


def harness_records(results: dict) -> list[dict]:
    """The harness's per-sample logs, one JSON-safe record per sample with its task and an `idx` (a task with
    several filters, gsm8k's strict-match and flexible-extract, logs each document once per filter)."""
    from lm_eval.utils import handle_non_serializable

    records = []
    for task, samples in results["samples"].items():
        for sample in samples:
            record = json.loads(json.dumps(sample, default=handle_non_serializable))
            kept = "" if sample.get("filter", "none") == "none" else f"/{sample['filter']}"
            records.append({"idx": f"{task}/{sample['doc_id']}{kept}", "task": task, **record})
    return records
