"""`init.stable_gamma=auto`: γ chosen by a line search on held-out batches.

With the stable scale, LoRA-One's initial model is W + s·B₀A₀ = W − (s/γ)·[G]_r/σ₁: γ only sets
the length η = s/γ of one spectrally normalised, rank-r gradient step (σ₁ per layer). So the adapter
is written once with γ = 1 and, for each γ of a log-spaced grid, rescaled (both factors by 1/√γ, no
new SVD); the loss of each candidate model is measured on `init.gamma_search.batches` micro-batches
that G did not see (the ones that follow G's in the training order), by forward passes only. The γ
of the lowest loss is kept. An init that offsets the base (LoRA-GA) starts from the pretrained model
whatever γ is, so the loss cannot choose its γ: it is refused (GradientInit.check_config)."""
import math
import time

import numpy as np
import torch
from omegaconf import DictConfig
from peft import PeftModel

from lora_one import ConfigError
from lora_one.init.dora import rebuild_magnitude
from lora_one.models.adapters import ADAPTER, lora_layers
from lora_one.progress import progress

AUTO = "auto"


def check_search_config(search: DictConfig) -> None:
    if search.batches < 1 or search.points < 2:
        raise ConfigError(f"init.gamma_search.batches must be ≥ 1 and points ≥ 2 "
                          f"(got {search.batches}, {search.points})")
    if not 0 < search.min < search.max:
        raise ConfigError(f"init.gamma_search needs 0 < min < max (got {search.min}, {search.max})")


def gamma_grid(search: DictConfig) -> list[float]:
    """`points` values of γ, log-spaced from `min` to `max` (both included)."""
    return np.geomspace(search.min, search.max, search.points).tolist()


@torch.no_grad()
def held_out_loss(model: PeftModel, batches: list[dict], device) -> float:
    """Mean over `batches` of each batch's mean token loss (dropout off), as the run's eval loss."""
    losses = [model(**{k: v.to(device) for k, v in batch.items()}).loss.item() for batch in batches]
    return sum(losses) / len(losses)


@torch.no_grad()
def set_gamma(factors: dict, gamma: float) -> None:
    """Write (B₁, A₁)/√γ into each layer (γ = 1 factors kept in `factors`), then DoRA's magnitude."""
    for layer, (B1, A1) in factors.items():
        layer.lora_B[ADAPTER].weight.copy_((B1 * gamma**-0.5).to(layer.lora_B[ADAPTER].weight.dtype))
        layer.lora_A[ADAPTER].weight.copy_((A1 * gamma**-0.5).to(layer.lora_A[ADAPTER].weight.dtype))
        rebuild_magnitude(layer)


def search_gamma(model: PeftModel, search: DictConfig, batches: list[dict], device, show_progress: bool) -> dict:
    """The adapters hold the γ = 1 init: evaluate every γ of the grid on `batches`, leave the best one
    written, and return what results.json records (grid, η = s/γ, losses, the choice, the time).
    `show_progress`: the grid's progress (the main process)."""
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    factors = {layer: (layer.lora_B[ADAPTER].weight.float().clone(), layer.lora_A[ADAPTER].weight.float().clone())
               for layer in lora_layers(model).values()}
    grid = gamma_grid(search)
    losses = []
    for gamma in progress(grid, desc="init.stable_gamma=auto: γ grid", unit="γ", show=show_progress):
        set_gamma(factors, gamma)
        losses.append(held_out_loss(model, batches, device))
    finite = [i for i, loss in enumerate(losses) if math.isfinite(loss)]
    if not finite:
        raise RuntimeError("init.stable_gamma=auto: the loss is not finite at any γ of the grid")
    best = min(finite, key=losses.__getitem__)
    set_gamma(factors, grid[best])
    model.train(was_training)
    scaling = next(iter(factors)).scaling[ADAPTER]
    return {"gamma_grid": grid, "eta_grid": [scaling / g for g in grid], "held_out_loss": losses,
            "chosen_gamma": grid[best], "chosen_eta": scaling / grid[best], "lora_scaling": scaling,
            "search_batches": len(batches), "search_time_s": time.perf_counter() - start}
