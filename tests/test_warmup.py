"""The learning-rate warm-up never trains a step at lr 0: step i of w warm-up steps uses lr·(i+1)/(w+1),
then the schedule proper, from its peak (closed forms written out here, not transformers' code)."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY, run_experiment
from lora_one.train import build_scheduler

LR = 2e-4


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return LR * (step + 1) / (warmup + 1)
    return LR * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def linear_with_warmup(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return LR * (step + 1) / (warmup + 1)
    return LR * (total - step) / (total - warmup)


def scheduled_lrs(scheduler: str, warmup: float, total: int) -> list[float]:
    """The lr of each of `total` optimizer steps, read as the training loop reads it."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    schedule = build_scheduler(optimizer, OmegaConf.create({"scheduler": scheduler, "warmup": warmup}), total)
    lrs = []
    for _ in range(total):
        lrs.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    return lrs


@pytest.mark.parametrize("scheduler, closed_form", [("cosine", cosine_with_warmup), ("linear", linear_with_warmup)])
@pytest.mark.parametrize("warmup, total, warmup_steps", [(0.03, 20, 1), (0.25, 12, 3), (0.0, 6, 0)])
def test_the_warm_up_starts_above_zero_and_follows_the_closed_form(scheduler, closed_form, warmup, total, warmup_steps):
    lrs = scheduled_lrs(scheduler, warmup, total)
    assert lrs == pytest.approx([closed_form(i, warmup_steps, total) for i in range(total)], rel=1e-12, abs=1e-18)
    assert lrs[0] > 0 and (warmup_steps == 0 or lrs[warmup_steps] == pytest.approx(LR))  # peak on step w


def test_a_constant_schedule_ignores_the_warm_up_as_before():
    assert scheduled_lrs("constant", 0.5, 4) == [LR] * 4


def test_a_run_records_the_warmed_up_curve(tmp_path):
    """SmolLM2's recipe (cosine, 3 % warm-up) on the tiny model: the first step trains at lr/2."""
    results = run_experiment(TINY + ["model.max_steps=5", "model.scheduler=cosine", "model.warmup=0.03",
                                     f"model.learning_rate={LR}", "checkpoint.every_n_steps=0"], tmp_path)
    assert results["lr_curve"] == pytest.approx([cosine_with_warmup(i, 1, 5) for i in range(5)], rel=1e-12)
    assert results["lr_curve"][0] == pytest.approx(LR / 2)
