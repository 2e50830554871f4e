"""Checks of a composed config that Hydra cannot do, run before any work (one ConfigError each)."""
from omegaconf import DictConfig

from lora_one import ConfigError
from lora_one.init import init_method
from lora_one.train.optim import check_optim_config


def validate_config(cfg: DictConfig) -> None:
    init_method(cfg.init).check_config(cfg.init)
    check_optim_config(cfg.optim)
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
