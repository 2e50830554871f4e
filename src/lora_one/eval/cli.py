"""The command line of eval/*.py: the task's options come from its conf/eval/<task>.yaml (one
`--option value` each, defaults as there), plus the model, an optional PEFT adapter, a predictions
file to score instead of a model, and where to write the results."""
import argparse
import json
import logging
import os
import sys
import time

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf

from lora_one import ConfigError
from lora_one.config import compose_config, conf_dir
from lora_one.eval.runner import BENCHMARKS, output_name, predictions_path, run_benchmark
from lora_one.models import load_model, load_tokenizer

log = logging.getLogger(__name__)

# Task options that follow the run's own config by interpolation (${seed}, ${dataset}): no CLI flag.
FROM_RUN_CONFIG = ("seed", "dataset")


def build_parser(task: str, defaults: DictConfig) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=f"Evaluate a model on {task}.")
    parser.add_argument("--model", default="smollm2_135m", help="a merged model directory, a hub id, or a "
                        "conf/model option such as smollm2_135m (the default) or tiny_llama")
    parser.add_argument("--adapter", help="a PEFT adapter directory to apply to --model")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="default: the model config's")
    parser.add_argument("--predictions", help="score this jsonl (task_id or idx, completion) instead of running a model")
    parser.add_argument("--output_dir", default=os.path.join("outputs", "eval", task), help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=42, help="sampling seed (default: %(default)s)")
    for key, value in OmegaConf.to_container(defaults).items():
        if key in FROM_RUN_CONFIG:
            continue
        parser.add_argument(f"--{key}", nargs="+" if isinstance(value, list) else None,
                            help=f"default: {value} (conf/eval/{task}.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="overrides of the run config the task follows, e.g. dataset.chat_template=true")
    return parser


def task_config(task: str, args: argparse.Namespace) -> DictConfig:
    """The run config with `eval=<task>` and the chosen model, the command line's values applied."""
    model_option = args.model if (conf_dir() / "model" / f"{args.model}.yaml").exists() else None
    overrides = [f"eval={task}", f"seed={args.seed}"] + ([f"model={model_option}"] if model_option else [])
    cli_overrides = getattr(BENCHMARKS[task], "cli_overrides", None)  # e.g. glue: --task picks the dataset config
    overrides += (cli_overrides(args) if cli_overrides else []) + args.overrides
    cfg = compose_config(overrides)
    if model_option is None:  # a path or hub id, read with the default model config's settings
        cfg.model.path = args.model
    if args.dtype:
        cfg.model.dtype = args.dtype
    for key in cfg.eval[task]:
        given = getattr(args, key, None) if key not in FROM_RUN_CONFIG else None  # e.g. the run's --seed
        if given is not None:  # typed as YAML would type it: 5 → int, null → None, /a/b → str
            cfg.eval[task][key] = [yaml.safe_load(v) for v in given] if isinstance(given, list) else yaml.safe_load(given)
    return cfg


def load_for_eval(cfg: DictConfig, adapter: str | None, accelerator: Accelerator):
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    model = load_model(cfg.model, tokenizer, cfg.cache_dir)
    if adapter:
        from peft import PeftModel

        if not os.path.exists(os.path.join(adapter, "adapter_config.json")):
            raise ConfigError(f"--adapter '{adapter}' has no adapter_config.json")
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model.to(accelerator.device), tokenizer


def main(task: str, argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    defaults = compose_config([f"eval={task}"]).eval[task]
    args = build_parser(task, defaults).parse_args(argv)
    start = time.perf_counter()
    try:
        cfg = task_config(task, args)
        task_cfg = cfg.eval[task]
        os.makedirs(args.output_dir, exist_ok=True)
        if args.predictions:
            accelerator = None
            metrics = run_benchmark(task, task_cfg, args.output_dir, predictions=args.predictions)
        else:
            accelerator = Accelerator(cpu=not torch.cuda.is_available())
            set_seed(cfg.seed)
            model, tokenizer = load_for_eval(cfg, args.adapter, accelerator)
            metrics = run_benchmark(task, task_cfg, args.output_dir, model, tokenizer, accelerator)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    if accelerator is None or accelerator.is_main_process:
        summary = {"task": task, "metrics": metrics, "wall_time_s": time.perf_counter() - start,
                   "command": " ".join([os.path.basename(sys.argv[0])] + (argv if argv is not None else sys.argv[1:])),
                   "model": args.model, "adapter": args.adapter, "predictions_in": args.predictions,
                   "num_processes": accelerator.num_processes if accelerator else 1,
                   "predictions_out": predictions_path(args.output_dir, output_name(task, task_cfg)),
                   "config": OmegaConf.to_container(task_cfg, resolve=True)}
        with open(os.path.join(args.output_dir, f"{output_name(task, task_cfg)}_results.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(json.dumps({"task": task, "metrics": metrics, "wall_time_s": round(summary["wall_time_s"], 1)}, indent=2))
    return metrics
