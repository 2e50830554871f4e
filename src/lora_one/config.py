"""The composed run config: composing it outside a Hydra app (tests, benchmarks, the eval CLIs), and
the checks Hydra cannot do, run before any work (one ConfigError each)."""
import difflib
import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lora_one import ConfigError
from lora_one.eval.runner import BENCHMARKS, check_eval_config
from lora_one.init import init_method
from lora_one.models.full_finetune import check_full_finetuning_config, is_full_finetuning
from lora_one.train.optim import check_optim_config


def conf_dir() -> Path:
    """The project's conf/: `$LORA_ONE_CONF`, else the one of this checkout (beside src/)."""
    path = Path(os.environ.get("LORA_ONE_CONF") or Path(__file__).resolve().parents[2] / "conf")
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"no Hydra config at {path}/config.yaml: set LORA_ONE_CONF to the project's conf/ directory")
    return path


def compose_config(overrides: list[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """The config `python run_exp.py <overrides>` would run with (inside a Hydra app: with its config)."""
    if GlobalHydra.instance().is_initialized():  # the app's search path, and its --config-name
        name = HydraConfig.get().job.config_name if HydraConfig.initialized() else "config"
        return compose(config_name=name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)


INTEGER, REAL = "an integer", "a number"
# Every numeric setting of a run: (key, kind, the valid range as a test, in words[; a hint]). A key
# absent from the selected options is skipped; None as the test: the type only, its group checks the range.
NUMERIC_SETTINGS = [
    ("seed", INTEGER, None, ""),
    ("model.learning_rate", REAL, lambda v: v > 0, "> 0"),
    ("model.weight_decay", REAL, lambda v: v >= 0, "≥ 0"),
    ("model.warmup", REAL, lambda v: 0 <= v <= 1, "in [0, 1]; a fraction of the steps"),
    ("model.max_steps", INTEGER, lambda v: v >= -1, "≥ -1; -1 trains model.epochs epochs, 0 only initialises"),
    ("model.epochs", INTEGER, lambda v: v >= 1, "≥ 1"),
    ("model.per_device_batch_size", INTEGER, lambda v: v >= 1, "≥ 1"),
    ("model.real_batch_size", INTEGER, lambda v: v >= 1, "≥ 1"),
    ("model.max_length", INTEGER, lambda v: v >= 2, "≥ 2"),
    ("dataset.eval_size", INTEGER, lambda v: v >= 1, "≥ 1; the rows held out for the eval loss"),
    ("dataset.max_train_samples", INTEGER, lambda v: v >= 1, "≥ 1; null takes all rows"),
    ("dataset.num_generated", INTEGER, lambda v: v >= 1, "≥ 1"),
    ("peft.lora_r", INTEGER, lambda v: v >= 1, "≥ 1"),
    ("peft.lora_alpha", REAL, lambda v: v > 0, "> 0"),
    ("peft.lora_dropout", REAL, lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.betas.0", REAL, lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.betas.1", REAL, lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.eps", REAL, lambda v: v >= 0, "≥ 0"),
    ("optim.max_grad_norm", REAL, lambda v: v >= 0, "≥ 0; 0 or null turns clipping off"),
    ("optim.prec_reg", REAL, None, ""),
    ("optim.lr_ratio", REAL, None, ""),
    ("init.stable_gamma", REAL, None, ""),
    ("init.gamma_search.batches", INTEGER, None, ""),
    ("init.gamma_search.points", INTEGER, None, ""),
    ("init.gamma_search.min", REAL, None, ""),
    ("init.gamma_search.max", REAL, None, ""),
    ("init.bsz", INTEGER, lambda v: v >= 1, "≥ 1"),
    ("init.iters", INTEGER, lambda v: v >= 1, "≥ 1"),
    ("init.max_length", INTEGER, lambda v: v >= 2, "≥ 2"),
    ("init.oversampling", INTEGER, lambda v: v >= 0, "≥ 0"),
    ("init.sketch_seed", INTEGER, None, ""),
    ("init.svd_q", INTEGER, lambda v: v >= 1, "≥ 1; null takes 4 × the singular directions needed"),
    ("init.svd_niter", INTEGER, lambda v: v >= 0, "≥ 0"),
    ("init.rho", REAL, lambda v: v >= 1, "≥ 1"),
    ("init.tau", REAL, lambda v: 0 < v <= 1, "in (0, 1]"),
    ("init.niter", INTEGER, lambda v: v >= 0, "≥ 0"),
    ("checkpoint.every_n_steps", INTEGER, lambda v: v >= 0, "≥ 0"),
    ("checkpoint.keep", INTEGER, lambda v: v >= 1, "≥ 1"),
    ("eval_loss_every", INTEGER, lambda v: v >= 0, "≥ 0; 0 measures the held-out loss after the init and at the end only"),
    ("log_every", INTEGER, lambda v: v >= 0, "≥ 0; 0 logs no training-loss lines"),
    ("wandb.init_timeout_s", REAL, lambda v: v > 0, "> 0"),
]
# The settings benchmarks share (conf/eval/*.yaml), checked under each benchmark that has them.
EVAL_SETTINGS = [
    ("limit", INTEGER, lambda v: v >= 1, "≥ 1; null scores every question"),
    ("subset_seed", INTEGER, None, ""),
    ("batch_size", INTEGER, lambda v: v >= 1, "≥ 1"),
    ("max_new_tokens", INTEGER, lambda v: v >= 1, "≥ 1"),
    ("temperature", REAL, lambda v: v >= 0, "≥ 0; 0 decodes greedily"),
    ("top_p", REAL, lambda v: 0 < v <= 1, "in (0, 1]"),
    ("num_samples", INTEGER, lambda v: v >= 1, "≥ 1"),
    ("num_beams", INTEGER, lambda v: v >= 1, "≥ 1"),
    ("shots", INTEGER, lambda v: v >= 0, "≥ 0"),
    ("timeout_s", REAL, lambda v: v > 0, "> 0"),
    ("memory_mb", INTEGER, lambda v: v >= 1, "≥ 1"),
]
NUMERIC_SETTINGS += [(f"eval.{task}.{key}", *check) for task in BENCHMARKS for key, *check in EVAL_SETTINGS]
NULLABLE = {"dataset.max_train_samples", "optim.max_grad_norm", "init.svd_q",
            *(f"eval.{task}.{key}" for task in BENCHMARKS for key in ("limit", "subset_seed"))}
WORD_INSTEAD = {"init.stable_gamma": "auto"}  # numeric settings that also take one word (a γ line search)
ABSENT = object()


def is_number(value, kind: str) -> bool:
    """An int (or, for REAL, a float); bools are not numbers here, NaN and inf are not settings."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) if kind == INTEGER else value == value and abs(value) != float("inf")


def or_word(key: str) -> str:
    return f" or {WORD_INSTEAD[key]}" if key in WORD_INSTEAD else ""


def check_numeric_settings(cfg: DictConfig) -> None:
    """One ConfigError naming the first numeric setting of the wrong type or out of its range."""
    for key, kind, valid, in_words in NUMERIC_SETTINGS:
        value = OmegaConf.select(cfg, key, default=ABSENT)
        if value is ABSENT or (value is None and key in NULLABLE) or value == WORD_INSTEAD.get(key, ABSENT):
            continue
        if not is_number(value, kind):
            raise ConfigError(f"{key} must be {kind}{or_word(key)} (got {value!r})")
        if valid is not None and not valid(value):
            valid_range, _, hint = in_words.partition("; ")
            raise ConfigError(f"{key} must be {valid_range} (got {value})" + (f": {hint}" if hint else ""))


def validate_config(cfg: DictConfig) -> None:
    check_numeric_settings(cfg)  # first: the other checks compare numbers
    if is_full_finetuning(cfg.peft):  # a LoRA-only init or optimizer: said so before its own settings are checked
        check_full_finetuning_config(cfg)
    init_method(cfg.init).check_config(cfg.init)
    check_optim_config(cfg.optim)
    check_eval_config(cfg.eval)
    model = cfg.model
    if model.per_device_batch_size < 1 or model.real_batch_size < model.per_device_batch_size:
        raise ConfigError(
            f"model.real_batch_size ({model.real_batch_size}) must be ≥ model.per_device_batch_size "
            f"({model.per_device_batch_size}) ≥ 1"
        )


def accumulation_steps(model_cfg: DictConfig, num_processes: int) -> int:
    """Micro-batches per optimizer step so that per_device × processes × steps = real_batch_size."""
    per_step = model_cfg.per_device_batch_size * num_processes
    if model_cfg.real_batch_size % per_step:
        raise ConfigError(
            f"model.real_batch_size={model_cfg.real_batch_size} is not a multiple of per_device_batch_size × "
            f"processes = {model_cfg.per_device_batch_size} × {num_processes}"
        )
    return model_cfg.real_batch_size // per_step


def leaves(node, prefix: str = ""):
    """(dotted key, value) of every leaf of a resolved config container (lists are leaves)."""
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def check_config_keys(cfg: DictConfig, overrides: list[str]) -> None:
    """The schema check Hydra leaves out: `++key=value` (and `+key=value`) adds a key the selected
    group options do not define without a word, so a typo (`++init.directon=LoRA-GA`) would run the
    default silently. The schema is the config composed from the group choices alone (`model=…`,
    `experiment=…`); every key of `cfg` must be in it (else one ConfigError naming the nearest valid
    key), and a key whose defined value is a number must still hold one."""
    group_choices = [o for o in overrides if (conf_dir() / o.lstrip("+").split("=", 1)[0]).is_dir()]
    if len(group_choices) == len(overrides):
        return  # nothing but group choices: cfg is the schema
    schema = dict(leaves(OmegaConf.to_container(compose_config(group_choices), resolve=True)))
    for key, value in leaves(OmegaConf.to_container(cfg, resolve=True)):
        if key not in schema:
            nearest = difflib.get_close_matches(key, schema, n=1, cutoff=0.6)
            hint = f"did you mean {nearest[0]}?" if nearest else "the selected config options do not define it"
            raise ConfigError(f"{key} is not a config key ({hint})")
        defined = schema[key]
        if is_number(defined, REAL) and not is_number(value, REAL) and value is not None and value != WORD_INSTEAD.get(key):
            raise ConfigError(f"{key} must be a number{or_word(key)} like its default {defined} (got {value!r})")
