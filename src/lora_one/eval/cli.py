"""The command line `lora-one-eval <task> [options]` (and eval/<task>.py, the same for one task): the task's
options come from its conf/eval/<task>.yaml (one `--option value` each, defaults as there), plus the model, an
optional PEFT adapter, a predictions file to score instead of a model, and where to write the results."""
import argparse
import inspect
import json
import logging
import os
import re
import sys
import time

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf

from lora_one import ConfigError
from lora_one.config import compose_config, conf_dir
from lora_one.eval.benchmark import BENCHMARKS
from lora_one.eval.runner import benchmark_named, predictions_path, run_benchmark
from lora_one.models import load_model, load_tokenizer
from lora_one.models.model_card import base_model_record

log = logging.getLogger(__name__)

# Task options that follow the run's own config by interpolation (${seed}, ${dataset}): no CLI flag.
FROM_RUN_CONFIG = ("seed", "dataset")
COMMAND = "lora-one-eval"  # the console script (pyproject.toml's [project.scripts])
INTERPOLATED_KEY = re.compile(r"\$\{([\w.]+)\}")  # ${paths.data_dir}/gsm8k/test.jsonl: paths.data_dir


def build_parser(task: str, defaults: DictConfig, prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=f"Evaluate a model on {task}.")
    parser.add_argument("--model", default="smollm2_135m", help="a merged model directory, a hub id, or a "
                        "conf/model option such as smollm2_135m (the default) or tiny_llama")
    parser.add_argument("--adapter", help="a PEFT adapter directory to apply to --model")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="default: the model config's")
    parser.add_argument("--predictions",
                        help="score this jsonl (task_id or idx, completion) instead of running a model")
    parser.add_argument("--output_dir", default=os.path.join("outputs", "eval", task), help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=42, help="sampling seed (default: %(default)s)")
    written = OmegaConf.to_container(defaults)
    for key, value in OmegaConf.to_container(defaults, resolve=True).items():
        if key in FROM_RUN_CONFIG:
            continue
        parser.add_argument(f"--{key}", nargs="+" if isinstance(value, list) else None,
                            help=default_help(task, value, written[key]))
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="overrides of the run config the task follows, e.g. dataset.chat_template=true")
    return parser


def default_help(task: str, value, written) -> str:
    """`default: <value>` as a run would use it (a real path, not `${paths.data_dir}/…`), and the settings it
    follows when conf/eval/<task>.yaml interpolates them (set them as KEY=VALUE, e.g. paths.data_dir=/data)."""
    follows = INTERPOLATED_KEY.findall(str(written))
    source = f"from {', '.join(follows)}; " if follows else ""
    if isinstance(value, str) and os.path.isabs(value):
        value = os.path.normpath(value)  # <checkout>/../shared/data/… as the directory it is
    return f"default: {value} ({source}conf/eval/{task}.yaml)".replace("%", "%%")  # argparse formats help with %


def task_config(task: str, args: argparse.Namespace) -> DictConfig:
    """The run config with `eval=<task>` and the chosen model, the command line's values applied."""
    model_option = args.model if (conf_dir() / "model" / f"{args.model}.yaml").exists() else None
    overrides = [f"eval={task}", f"seed={args.seed}"] + ([f"model={model_option}"] if model_option else [])
    overrides += benchmark_named(task).cli_overrides(args) + args.overrides  # e.g. glue: --task picks the dataset
    cfg = compose_config(overrides)
    if model_option is None:  # a path or hub id, read with the default model config's settings
        cfg.model.path = args.model
        cfg.model.hub_id = None  # the default model's: not this one's (results record the path, or it if a hub id)
    if args.dtype:
        cfg.model.dtype = args.dtype
    for key in cfg.eval[task]:
        given = getattr(args, key, None) if key not in FROM_RUN_CONFIG else None  # e.g. the run's --seed
        if given is not None:  # typed as YAML would type it: 5 → int, null → None, /a/b → str
            parsed = [yaml.safe_load(v) for v in given] if isinstance(given, list) else yaml.safe_load(given)
            cfg.eval[task][key] = parsed
    return cfg


def load_for_eval(cfg: DictConfig, adapter: str | None, accelerator: Accelerator):
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    model = load_model(cfg.model, tokenizer, cfg.cache_dir)
    if adapter:
        from peft import PeftModel
        from safetensors import SafetensorError

        if not os.path.exists(os.path.join(adapter, "adapter_config.json")):
            raise ConfigError(f"--adapter '{adapter}' has no adapter_config.json")
        try:  # a file read back: a hand-edited config, truncated weights, an adapter of another base model
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        except (ValueError, OSError, RuntimeError, KeyError, SafetensorError) as err:
            cause = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise ConfigError(f"--adapter '{adapter}' cannot be applied to model '{cfg.model.name}' "
                              f"({type(err).__name__}: {cause})") from err
    return model.to(accelerator.device), tokenizer


def score_predictions(task: str, task_cfg: DictConfig, output_dir: str, path: str) -> dict:
    """The metrics of the completions in `path`; a file answering only some of the questions (made with a
    --limit elsewhere) is refused with the --limit that scores just those, when one does."""
    try:
        return run_benchmark(task, task_cfg, output_dir, predictions=path)
    except ConfigError as err:
        raise ConfigError(f"{err}{limit_hint(task, task_cfg, path)}") from None


def limit_hint(task: str, task_cfg: DictConfig, path: str) -> str:
    """What to add to an error about `path` when it answers fewer questions than are selected: the
    `--limit N` whose questions it answers (the first N of gsm8k, humaneval, glue; of each subject or task
    of mmlu and commonsense), else how --limit chooses them; "" for any other error."""
    answered = answered_ids(path)
    benchmark = benchmark_named(task)
    if answered is None or {item["id"] for item in benchmark.load_items(task_cfg)} <= answered:
        return ""
    limited = task_cfg.copy()
    limited.limit = len(answered)
    if {item["id"] for item in benchmark.load_items(limited)} <= answered:
        return f"; it answers {len(answered)}, the ones --limit {len(answered)} selects: add it to score only those"
    return "; to score part of the questions, choose them with --limit N (and --subset_seed S for a seeded sample)"


def answered_ids(path: str) -> set[str] | None:
    """The question ids (`task_id` or `idx`) a predictions file answers; None when it cannot be read as one."""
    try:
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return {str(row.get("task_id", row.get("idx"))) for row in rows}
    except (OSError, ValueError, AttributeError):  # missing, not JSON lines, a line that is no object
        return None


def main(task: str, argv: list[str] | None = None, prog: str | None = None) -> dict:
    """Evaluate on `task` as the command line `argv` (default: sys.argv[1:]) says; `prog` is the command as typed
    before those options (default: the script's name, `gsm8k.py`), shown in --help and recorded in the results."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    defaults = compose_config([f"eval={task}"]).eval[task]
    parser = build_parser(task, defaults, prog)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        cfg = task_config(task, args)
        task_cfg = cfg.eval[task]
        os.makedirs(args.output_dir, exist_ok=True)
        # what produced the predictions scored: the file given (no model ran, whatever --model says), or
        # the model that ran, with the base it truly is (a GGUF's file and quantisation, the weights loaded)
        if args.predictions:
            accelerator = None
            source = {"predictions_in": args.predictions, "model": None, "adapter": None}
            metrics = score_predictions(task, task_cfg, args.output_dir, args.predictions)
        else:
            accelerator = Accelerator(cpu=not torch.cuda.is_available())
            set_seed(cfg.seed)
            model, tokenizer = load_for_eval(cfg, args.adapter, accelerator)
            source = {"predictions_in": None, "model": args.model, "adapter": args.adapter,
                      "base_model": base_model_record(cfg.model, model.name_or_path)}
            metrics = run_benchmark(task, task_cfg, args.output_dir, model, tokenizer, accelerator)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    if accelerator is None or accelerator.is_main_process:
        name = benchmark_named(task).output_name(task_cfg)
        summary = {"task": task, "metrics": metrics, "wall_time_s": time.perf_counter() - start,
                   "command": " ".join([parser.prog] + (argv if argv is not None else sys.argv[1:])),
                   **source,
                   "num_processes": accelerator.num_processes if accelerator else 1,
                   "predictions_out": predictions_path(args.output_dir, name),
                   "config": OmegaConf.to_container(task_cfg, resolve=True)}
        with open(os.path.join(args.output_dir, f"{name}_results.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(json.dumps({"task": task, "metrics": metrics, "wall_time_s": round(summary["wall_time_s"], 1)}, indent=2))
    return metrics


def eval_command(argv: list[str] | None = None) -> None:
    """`lora-one-eval <task> [options]`: `main` for the task named first. Returns nothing, as a console script's
    function must (its return value would become the exit status)."""
    parser = argparse.ArgumentParser(
        prog=COMMAND, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Evaluate a model on a benchmark; `{COMMAND} <task> --help` lists the task's options and "
                    "their defaults (conf/eval/<task>.yaml).", epilog=task_list())
    parser.add_argument("task", choices=list(BENCHMARKS), metavar="task", help="one of the tasks below")
    parser.add_argument("options", nargs=argparse.REMAINDER, help=f"the task's options ({COMMAND} <task> --help)")
    args = parser.parse_args(argv)
    main(args.task, args.options, prog=f"{COMMAND} {args.task}")


def task_list() -> str:
    """The tasks, each with the first line of its benchmark's description."""
    width = max(map(len, BENCHMARKS))
    return "tasks:\n" + "\n".join(f"  {task:<{width}}  {inspect.getdoc(benchmark).splitlines()[0]}"
                                   for task, benchmark in BENCHMARKS.items())
