"""The one-step study (src/lora_one/reproduce/one_step.py) on tiny_llama: its fast held-out loss is
evaluate_loss's, its rank-r step is a hand SVD truncation, full rank is the full step, η = 0 is the
base model, and LoRA-GA's init keeps the base loss."""
import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from conftest import TINY, compose_config
from lora_one.data import encode_rows, load_splits, make_batches, make_collator
from lora_one.models import load_model, load_tokenizer
from lora_one.models.adapters import ADAPTER, lora_layers
from lora_one.reproduce.one_step import (
    HeldOutLoss,
    StepCurve,
    adapter_step_curve,
    one_step_gradient,
    one_step_markdown,
    run_one_step,
    truncated,
)
from lora_one.train import evaluate_loss

OVERRIDES = [*TINY, "peft=qv", "init=gradient", "init.bsz=4", "init.iters=1"]


@pytest.fixture(scope="module")
def tiny():
    cfg = compose_config(OVERRIDES)
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    train_rows, eval_rows = load_splits(cfg.dataset, cfg.seed)
    eval_set = encode_rows(tokenizer, eval_rows, cfg.model.max_length, False)
    batches = make_batches(tokenizer, encode_rows(tokenizer, train_rows, cfg.model.max_length, False), 4, 1)
    torch.manual_seed(0)
    base = load_model(cfg.model, tokenizer, cfg.cache_dir).eval()
    accelerator = Accelerator(cpu=True)
    grads, spectra = one_step_gradient(base, cfg, batches, accelerator)
    collate = make_collator(tokenizer)
    # regrouped batches of 3 rows (≤ 70 tokens each), so that they mix rows of different loader batches of 4
    held_out = HeldOutLoss(eval_set, collate, cfg.model.per_device_batch_size, tokens=210)
    loader = DataLoader(eval_set, batch_size=cfg.model.per_device_batch_size, collate_fn=collate)
    targets = {name: p for name, p in base.named_parameters() if name in grads}
    return SimpleNamespace(cfg=cfg, base=base, batches=batches, accelerator=accelerator, grads=grads, spectra=spectra,
                           held_out=held_out, loader=loader, targets=targets)


def test_fast_held_out_loss_is_evaluate_loss(tiny):
    loader_batch = tiny.held_out.loader_batch
    assert any(len(set(loader_batch[rows].tolist())) > 1 for rows, _ in tiny.held_out.groups)  # really regrouped
    assert tiny.held_out(tiny.base) == pytest.approx(evaluate_loss(tiny.base, tiny.loader, tiny.accelerator), rel=1e-6)


def test_rank_r_step_is_the_hand_svd_truncation(tiny):
    r, eta = 3, 2.0
    hand = {}
    for name, G in tiny.grads.items():
        U, S, Vh = np.linalg.svd(G.double().numpy(), full_matrices=False)
        hand[name] = torch.from_numpy((U[:, :r] * S[:r]) @ Vh[:r]).float()
        ours = truncated(*tiny.spectra[name][:3], r)
        assert torch.allclose(ours, hand[name], atol=1e-6 * G.abs().max().item())
        # Eckart–Young: what the truncation leaves out is the energy of the smaller singular values
        assert (G - ours).square().sum().item() == pytest.approx(float((S[r:] ** 2).sum()), rel=1e-3)
    curve = StepCurve("rank 3", tiny.base, tiny.targets, {n: truncated(*tiny.spectra[n][:3], r) for n in tiny.grads},
                      tiny.held_out, lambda line: None)
    stepped = copy.deepcopy(tiny.base)
    with torch.no_grad():
        for name, p in stepped.named_parameters():
            if name in hand:
                p.sub_(eta * hand[name])
    assert curve.at(eta) == pytest.approx(evaluate_loss(stepped, tiny.loader, tiny.accelerator), rel=1e-5)


def test_eta_zero_is_the_base_model_and_the_weights_are_restored(tiny):
    base_loss = tiny.held_out(tiny.base)
    curve = StepCurve("full", tiny.base, tiny.targets, tiny.grads, tiny.held_out, lambda line: None)
    assert curve.at(1.0) != pytest.approx(base_loss, abs=1e-4)  # the step changes the model...
    assert curve.at(0.0) == base_loss
    assert tiny.held_out(tiny.base) == base_loss  # ...and leaves it as it was


def test_lora_ga_init_keeps_the_base_loss_and_its_gradient_is_g_through_the_factors(tiny):
    base_loss = tiny.held_out(tiny.base)
    curve, info = adapter_step_curve("LoRA-GA", tiny.base, tiny.cfg, tiny.spectra, tiny.batches, tiny.accelerator,
                                     tiny.held_out, lambda line: None)
    s = info["lora_scaling"]
    for name, layer in lora_layers(curve.model).items():
        B, A, G = layer.lora_B[ADAPTER].weight, layer.lora_A[ADAPTER].weight, tiny.grads[name]
        assert (B @ A).abs().max() > 0  # a real offset, not a zero adapter
        # at an init that keeps the output, dL/dW_eff is G: dL/dB = s·G·Aᵀ, dL/dA = s·Bᵀ·G
        assert torch.allclose(curve.directions[f"{name}:lora_B"], s * G @ A.detach().T, atol=1e-5)
        assert torch.allclose(curve.directions[f"{name}:lora_A"], s * B.detach().T @ G, atol=1e-5)
    assert curve.at(0.0) == pytest.approx(base_loss, rel=1e-6)
    # stable scale, γ = 128, s = α/r = 2: s²c² = s²·√m/γ with m the out features (q_proj 64, v_proj 32)
    assert info["eta_per_lr"] == pytest.approx({"q_proj": 4 * 8 / 128, "v_proj": 4 * 32**0.5 / 128}, rel=1e-5)


def test_at_full_rank_the_truncated_step_is_the_full_step():
    results = run_one_step(compose_config(OVERRIDES), ranks=[1, 64], eta_grid=[0.3, 3.0], lr_grid=[1.0, 10.0],
                           adapter_inits=["LoRA-GA"], extensions=0, progress=lambda line: None)
    full, top, rank1 = (results["weight_steps"][k] for k in ("full", "rank 64", "rank 1"))
    assert top["loss"] == pytest.approx(full["loss"], rel=1e-6)
    assert top["fraction_best"] == pytest.approx(1.0, abs=1e-4)
    assert top["fraction_at_common_eta"] == pytest.approx(1.0, abs=1e-4)
    assert results["gradient"]["top_r_energy"]["64"]["min"] == pytest.approx(1.0, rel=1e-5)
    assert rank1["best"]["loss"] > full["best"]["loss"]  # one direction of G is not all of it
    assert results["adapter_steps"]["LoRA-GA"]["init_loss"] == pytest.approx(results["base_loss"], rel=1e-6)
    section = one_step_markdown(results, "one_step.png")
    assert f"| W − η·[G]_64 | {top['best']['eta']:.3g}" in section and f"{results['base_loss']:.4f}" in section
