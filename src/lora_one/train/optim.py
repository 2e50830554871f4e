"""Optimizer and learning-rate schedule of a run (the `optim` group and the model's lr settings).

    adamw         torch AdamW
    scaled_adamw  Riemannian-preconditioned AdamW (scaled.py)     scaled_sgd  its plain-SGD variant
    lora_pro      LoRA-Pro's adjusted gradients, AdamW variant (lora_pro.py)
    loraplus      LoRA+: B's learning rate = lr_ratio × A's (PEFT's create_loraplus_optimizer)
"""
import math

import torch
from omegaconf import DictConfig
from peft.optimizers import create_loraplus_optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler

from lora_one import ConfigError
from lora_one.train.lora_pairs import find_lora_pairs
from lora_one.train.lora_pro import LoRAProAdamW
from lora_one.train.scaled import ScaledAdamW, ScaledSGD

PAIR_OPTIMIZERS = {"scaled_adamw": ScaledAdamW, "scaled_sgd": ScaledSGD, "lora_pro": LoRAProAdamW}
OPTIMIZERS = ("adamw", *PAIR_OPTIMIZERS, "loraplus")


def check_optim_config(optim_cfg: DictConfig) -> None:
    """One ConfigError per bad `optim` setting."""
    if optim_cfg.name not in OPTIMIZERS:
        raise ConfigError(f"optim '{optim_cfg.name}' is unknown; use one of {OPTIMIZERS}")
    if optim_cfg.name in PAIR_OPTIMIZERS and not optim_cfg.prec_reg >= 0:
        raise ConfigError(f"optim.prec_reg must be ≥ 0 (got {optim_cfg.prec_reg})")
    if optim_cfg.name == "loraplus" and not optim_cfg.lr_ratio > 0:
        raise ConfigError(f"optim.lr_ratio must be > 0 (got {optim_cfg.lr_ratio})")


def build_optimizer(model: torch.nn.Module, optim_cfg: DictConfig, model_cfg: DictConfig) -> torch.optim.Optimizer:
    """The `optim` group's optimizer over the trainable parameters of the PEFT `model` (before
    accelerator.prepare), with `model.learning_rate` and `model.weight_decay`."""
    check_optim_config(optim_cfg)
    adamw = dict(lr=model_cfg.learning_rate, weight_decay=model_cfg.weight_decay,
                 betas=tuple(optim_cfg.betas), eps=optim_cfg.eps)
    params = [p for p in model.parameters() if p.requires_grad]
    if optim_cfg.name == "adamw":
        return torch.optim.AdamW(params, **adamw)
    if optim_cfg.name == "loraplus":
        weight_decay = adamw.pop("weight_decay")
        return create_loraplus_optimizer(model, torch.optim.AdamW, loraplus_lr_ratio=optim_cfg.lr_ratio,
                                         loraplus_weight_decay=weight_decay, **adamw)
    pairs = find_lora_pairs(model)
    if not pairs:
        raise ConfigError(f"optim={optim_cfg.name} needs trainable LoRA adapters (lora_A/lora_B); the model has none")
    return PAIR_OPTIMIZERS[optim_cfg.name](pairs, params, optim_cfg.prec_reg, **adamw)


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
