"""The composed run config: composing it outside a Hydra app (tests, benchmarks, the eval CLIs), and
the checks Hydra cannot do, run before any work (one ConfigError each)."""
import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lora_one import ConfigError
from lora_one.eval.runner import check_eval_config
from lora_one.init import init_method
from lora_one.train.optim import check_optim_config


def conf_dir() -> Path:
    """The project's conf/: `$LORA_ONE_CONF`, else the one of this checkout (beside src/)."""
    path = Path(os.environ.get("LORA_ONE_CONF") or Path(__file__).resolve().parents[2] / "conf")
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"no Hydra config at {path}/config.yaml: set LORA_ONE_CONF to the project's conf/ directory")
    return path


def compose_config(overrides: list[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """The config `python run_exp.py <overrides>` would run with."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def validate_config(cfg: DictConfig) -> None:
    init_method(cfg.init).check_config(cfg.init)
    check_optim_config(cfg.optim)
    check_eval_config(cfg.eval)
    if cfg.peft.lora_r < 1:
        raise ConfigError(f"peft.lora_r must be ≥ 1 (got {cfg.peft.lora_r})")
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
