"""Commonsense reasoning, the eight LLM-Adapters tasks (instruction/input/output/answer rows): the
training prompt (alpaca), the first answer word of the task's format in the completion against
`answer`; accuracy per task and their mean."""
import logging
import os

from lora_one import ConfigError
from lora_one.data.templates import build_prompt
from lora_one.eval.answers import CHOICE_PATTERNS, extract_choice
from lora_one.eval.benchmark import GeneratingBenchmark, register
from lora_one.eval.generation import Decoding
from lora_one.eval.records import read_rows, select

log = logging.getLogger(__name__)

TASKS = tuple(CHOICE_PATTERNS)
STOP = ("### Instruction", "Below is an instruction")


@register
class Commonsense(GeneratingBenchmark):
    """The eight LLM-Adapters commonsense tasks: the first answer word of the completion; accuracy per task."""

    name = "commonsense"

    def load_items(self, cfg) -> list[dict]:
        """`cfg.limit` questions of each task in `cfg.tasks` from `<cfg.data_dir>/<task>/test.json`. A task
        whose file is missing is skipped with a warning (hellaswag's test set is not always at hand)."""
        unknown = [task for task in cfg.tasks if task not in TASKS]
        if unknown:
            raise ConfigError(f"commonsense task '{unknown[0]}' is unknown; use some of {TASKS}")
        items = []
        for task in cfg.tasks:
            path = os.path.join(os.path.expanduser(str(cfg.data_dir)), task, "test.json")
            if not os.path.exists(path):
                log.warning("commonsense: %s has no test file at %s; skipped", task, path)
                continue
            rows = [{"id": f"{task}/{idx}", "task": task, "gold": row["answer"].strip().lower(),
                     "prompt": build_prompt("alpaca", {"instruction": row["instruction"],
                                                       "input": row.get("input", "")})}
                    for idx, row in enumerate(read_rows(path, required=("instruction", "answer")))]
            items.extend(select(rows, cfg.limit, cfg.subset_seed))
        if not items:
            raise ConfigError(f"commonsense: no test file for any of {list(cfg.tasks)} under '{cfg.data_dir}'")
        return items

    def decoding(self, cfg) -> Decoding:
        return Decoding(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                        num_beams=cfg.num_beams, stop=STOP, seed=cfg.seed)

    def judge(self, item: dict, completion: str) -> dict:
        extracted = extract_choice(completion, item["task"])
        return {"extracted": extracted, "correct": extracted == item["gold"]}

    def score(self, cfg, items: list[dict], completions: list[list[str]]) -> tuple[dict, list[dict]]:
        """Accuracy per task of each question's first completion, their mean, and the tasks skipped."""
        records = [{"task_id": item["id"], "task": item["task"], "prompt": item["prompt"], "completion": outs[0],
                    **self.judge(item, outs[0]), "gold": item["gold"]} for item, outs in zip(items, completions)]
        metrics = {}
        for task in dict.fromkeys(r["task"] for r in records):
            hits = [r["correct"] for r in records if r["task"] == task]
            metrics[task] = {"accuracy": sum(hits) / len(hits), "correct": sum(hits), "n": len(hits)}
        metrics["mean_accuracy"] = sum(m["accuracy"] for m in metrics.values()) / len(metrics)
        metrics["skipped"] = [task for task in cfg.tasks if task not in metrics]
        return metrics, records
