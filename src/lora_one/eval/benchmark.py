"""What a benchmark is, in one object per benchmark, and the registry of them by name.

The runner asks the benchmark, never its name: whether its settings are usable (`check_config`, before any
work), its questions (`load_items`), the metrics and one record per prediction of a model's answers
(`evaluate`) or of completions read from a file (`score_file`), and the stem of its files (`output_name`).
Each benchmark lives in its own module beside this one (gsm8k.py, humaneval.py, commonsense.py, mmlu.py,
glue.py) and registers itself here; users name one with `eval=<task>` or `lora-one-eval <task>`, and the
runner finds it (lora_one.eval.runner.benchmark_named).
"""
import argparse

from accelerate import Accelerator
from omegaconf import DictConfig

from lora_one.eval.generation import Decoding, generate, running_accuracy
from lora_one.eval.records import read_completions

Scored = tuple[dict, list[dict]]  # (metrics, one record per prediction)


class Benchmark:
    """One benchmark. Subclasses set `name` and override what differs; `cfg` is its `eval.<name>` config."""

    name: str  # the option of conf/eval, the key under `eval`, the task of `lora-one-eval`

    def check_config(self, cfg: DictConfig) -> None:
        """Raise one ConfigError naming the first unusable setting (checked before any work; number ranges are
        checked before, by the table in lora_one/config.py)."""

    def cli_overrides(self, args: argparse.Namespace) -> list[str]:
        """Run-config overrides that the task's command-line options imply (glue: --task cola → dataset=cola)."""
        return []

    def output_name(self, cfg: DictConfig) -> str:
        """The stem of the benchmark's files: `<stem>_predictions.jsonl`, `<stem>_results.json`."""
        return self.name

    def load_items(self, cfg: DictConfig) -> list[dict]:
        """The questions to score, each with a unique `id` (the `task_id` or `idx` of its predictions)."""
        raise NotImplementedError

    def evaluate(self, cfg: DictConfig, items: list[dict], model, tokenizer,
                 accelerator: Accelerator) -> Scored | tuple[None, None]:
        """The model's answers scored: (metrics, records) on the main process, (None, None) on the others."""
        raise NotImplementedError

    def score_file(self, cfg: DictConfig, items: list[dict], path: str) -> Scored:
        """The completions of the predictions file `path` (jsonl: `task_id` or `idx`, `completion`) scored."""
        raise NotImplementedError


class GeneratingBenchmark(Benchmark):
    """A benchmark that scores the completions the model generates (`decoding`) with `score`."""

    # A completion's verdict from its text alone ({"correct": ...}, for the running accuracy shown while
    # generating), or None when it takes more (HumanEval runs the program).
    judge = None

    def decoding(self, cfg: DictConfig) -> Decoding:
        raise NotImplementedError

    def score(self, cfg: DictConfig, items: list[dict], completions: list[list[str]]) -> Scored:
        """(metrics, records) of each question's completions (one or several samples)."""
        raise NotImplementedError

    def evaluate(self, cfg, items, model, tokenizer, accelerator):
        note = running_accuracy(items, self.judge) if self.judge else None
        completions = generate(model, tokenizer, [item["prompt"] for item in items], self.decoding(cfg),
                               cfg.batch_size, accelerator, desc=self.name, on_batch=note)
        return self.score(cfg, items, completions) if accelerator.is_main_process else (None, None)

    def score_file(self, cfg, items, path):
        return self.score(cfg, items, read_completions(path, items))


BENCHMARKS: dict[str, Benchmark] = {}


def register(benchmark_class: type[Benchmark]) -> type[Benchmark]:
    """Class decorator: make a benchmark findable by its `name`."""
    BENCHMARKS[benchmark_class.name] = benchmark_class()
    return benchmark_class
