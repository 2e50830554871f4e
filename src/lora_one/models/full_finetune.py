"""Full fine-tuning (`peft=none`, the paper's "Full FT" row): no adapters, every weight of the model
trains from its pretrained value with AdamW, on the same data, steps and schedule as the LoRA runs.

Only what applies without adapters is accepted: `init=default` (nothing to initialise: the model starts
as loaded) and `optim=adamw`; the LoRA-specific optimizers, inits and the alignment diagnostics (which
measure B and A) are refused with one ConfigError naming what to write instead."""
from omegaconf import DictConfig
from torch import nn

from lora_one import ConfigError
from lora_one.init.method import METHODS, init_method  # the registry (filled by lora_one.init): no import cycle

FULL_FINETUNING = "none"  # the `peft` option


def is_full_finetuning(peft_cfg: DictConfig) -> bool:
    return peft_cfg.name == FULL_FINETUNING


def check_full_finetuning_config(cfg: DictConfig) -> None:
    """With peft=none: one ConfigError for the first setting that needs adapters."""
    method = init_method(cfg.init)
    if method is not METHODS["LoRA"]:
        raise ConfigError(f"init={cfg.init.name} ({method.name}) initialises LoRA adapters and peft=none (full "
                          "fine-tuning) has none: use init=default (the pretrained weights as they are)")
    if cfg.optim.name != "adamw":
        raise ConfigError(f"optim={cfg.optim.name} is a LoRA optimizer and peft=none (full fine-tuning) has no "
                          "adapters: use optim=adamw")
    if cfg.diagnostics.alignment_every:
        raise ConfigError("diagnostics.alignment_every measures LoRA factors and peft=none (full fine-tuning) has "
                          "none: set it to 0")


def train_every_weight(model: nn.Module) -> nn.Module:
    """The model with every parameter trainable (a loaded model usually is; this makes it so)."""
    model.requires_grad_(True)
    return model
