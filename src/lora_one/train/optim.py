"""Optimizer and learning-rate schedule of a run (the `optim` group and the model's lr settings).

    adamw         torch AdamW
    scaled_adamw  Riemannian-preconditioned AdamW (scaled.py)     scaled_sgd  its plain-SGD variant
    lora_pro      LoRA-Pro's adjusted gradients, AdamW variant (lora_pro.py)
    loraplus      LoRA+: B's learning rate = lr_ratio × A's (PEFT's create_loraplus_optimizer)

One registry, `OPTIMIZERS`, maps each `optim.name` to its builder and its settings' schema (as lora_one.init's
METHODS does for inits) rather than a `_target_` in each YAML file: the builders need the model itself (its
LoRA pairs; LoRA+ groups its parameters), and a `_target_` key would enter every run's recorded config.
"""
import math
from dataclasses import dataclass
from typing import Callable

import torch
from omegaconf import DictConfig
from peft.optimizers import create_loraplus_optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler

from lora_one import ConfigError
from lora_one.schema import Interval, above, at_least, number
from lora_one.train.lora_pairs import find_lora_pairs
from lora_one.train.lora_pro import LoRAProAdamW
from lora_one.train.scaled import ScaledAdamW, ScaledSGD


@dataclass
class AdamWSettings:
    """The schema of conf/optim/adamw.yaml; every option has these keys (its AdamW: betas, eps)."""

    name: str
    betas: tuple[float, float] = number(Interval(0, 1, open_high=True))
    eps: float = number(at_least(0))
    max_grad_norm: float | None = number(at_least(0), "0 or null turns clipping off")


@dataclass
class PairSettings(AdamWSettings):
    """scaled_adamw, scaled_sgd, lora_pro: δ damps BᵀB and AAᵀ."""

    prec_reg: float = number(at_least(0))


@dataclass
class LoraPlusSettings(AdamWSettings):
    lr_ratio: float = number(above(0))


Builder = Callable[[torch.nn.Module, DictConfig, dict], torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerOption:
    """One `optim` option: how it builds its optimizer (model, optim config, AdamW's settings) and its schema."""

    build: Builder
    settings: type


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def adamw(model: torch.nn.Module, optim_cfg: DictConfig, settings: dict) -> torch.optim.Optimizer:
    return torch.optim.AdamW(trainable(model), **settings)


def loraplus(model: torch.nn.Module, optim_cfg: DictConfig, settings: dict) -> torch.optim.Optimizer:
    weight_decay = settings.pop("weight_decay")
    return create_loraplus_optimizer(model, torch.optim.AdamW, loraplus_lr_ratio=optim_cfg.lr_ratio,
                                     loraplus_weight_decay=weight_decay, **settings)


def on_lora_pairs(optimizer_class: type) -> Builder:
    """A builder for an optimizer of the LoRA pairs (B, A) of each adapted layer."""
    def build(model: torch.nn.Module, optim_cfg: DictConfig, settings: dict) -> torch.optim.Optimizer:
        pairs = find_lora_pairs(model)
        if not pairs:
            raise ConfigError(f"optim={optim_cfg.name} needs trainable LoRA adapters (lora_A/lora_B); "
                              "the model has none")
        return optimizer_class(pairs, trainable(model), optim_cfg.prec_reg, **settings)
    return build


# `optim.name` (conf/optim/<name>.yaml, and what results.json records) → its optimizer
OPTIMIZERS = {
    "adamw": OptimizerOption(adamw, AdamWSettings),
    "scaled_adamw": OptimizerOption(on_lora_pairs(ScaledAdamW), PairSettings),
    "scaled_sgd": OptimizerOption(on_lora_pairs(ScaledSGD), PairSettings),
    "lora_pro": OptimizerOption(on_lora_pairs(LoRAProAdamW), PairSettings),
    "loraplus": OptimizerOption(loraplus, LoraPlusSettings),
}


def optimizer_option(optim_cfg: DictConfig) -> OptimizerOption:
    """The option `optim.name` names, or one ConfigError listing the known ones."""
    if optim_cfg.name not in OPTIMIZERS:
        raise ConfigError(f"optim '{optim_cfg.name}' is unknown; use one of {tuple(OPTIMIZERS)}")
    return OPTIMIZERS[optim_cfg.name]


def build_optimizer(model: torch.nn.Module, optim_cfg: DictConfig, model_cfg: DictConfig) -> torch.optim.Optimizer:
    """The `optim` group's optimizer over the trainable parameters of the PEFT `model` (before
    accelerator.prepare), with `model.learning_rate` and `model.weight_decay`. Its settings were checked
    with the run config (lora_one.config.validate_config)."""
    settings = dict(lr=model_cfg.learning_rate, weight_decay=model_cfg.weight_decay,
                    betas=tuple(optim_cfg.betas), eps=optim_cfg.eps)
    return optimizer_option(optim_cfg).build(model, optim_cfg, settings)


def build_scheduler(optimizer: torch.optim.Optimizer, model_cfg: DictConfig, total_steps: int):
    """`model.scheduler` (any transformers schedule name) with `model.warmup` as a fraction of the steps
    (rounded up: w warm-up steps), warmed up from above 0.

    transformers' warm-up multiplies the lr of step i < w by i/w: step 0 trains at lr 0, a wasted step,
    and the whole warm-up when w = 1 (3 % of 20 steps). Here each warm-up factor f is moved 1/(w+1) of
    the way up to 1, f + (1 − f)/(w+1): the linear warm-up becomes (i+1)/(w+1), i.e. 1/(w+1), …,
    w/(w+1), and the schedule itself starts at its peak on step w, as before. A schedule that ignores
    the warm-up (constant: f = 1) is unchanged."""
    warmup_steps = math.ceil(model_cfg.warmup * total_steps)
    schedule = get_scheduler(model_cfg.scheduler, optimizer, num_warmup_steps=warmup_steps,
                             num_training_steps=total_steps)
    if not warmup_steps:
        return schedule

    lift = 1 / (warmup_steps + 1)

    def from_above(factor):
        return lambda step: factor(step) + (1 - factor(step)) * lift if step < warmup_steps else factor(step)

    # a fresh LambdaLR over the same optimizer: its base lrs are the `initial_lr` the first one recorded
    return LambdaLR(optimizer, [from_above(factor) for factor in schedule.lr_lambdas])
