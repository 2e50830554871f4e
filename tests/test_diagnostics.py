"""Alignment diagnostics: LoRA-One starts aligned (B₀'s columns span G's top-r left singular vectors,
A₀'s rows the right ones), PEFT's default A₀ scores like a random subspace, ‖sBA‖_F is the hand
value, and a run records the curves, logs them and draws alignment.png."""
import json

import pytest
import torch
from accelerate import Accelerator

from conftest import TINY, compose_config, run_experiment
from lora_one.data import encode_rows, load_splits, make_batches
from lora_one.diagnostics import AlignmentDiagnostics, principal_cosines_mean
from lora_one.init import init_method
from lora_one.models import add_lora_adapters, load_model, load_tokenizer, lora_layers
from lora_one.models.adapters import ADAPTER

ALL_LINEAR = ["peft=all", "peft.lora_r=4"]


def diagnosed(overrides):
    """References from the pretrained model on the init's batches, then the configured init; the
    diagnostics measured once, at step 0."""
    cfg = compose_config(TINY + overrides)
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    train_rows, _ = load_splits(cfg.dataset, cfg.seed)
    batches = make_batches(tokenizer, encode_rows(tokenizer, train_rows, cfg.model.max_length, False),
                           cfg.diagnostics.bsz, cfg.diagnostics.iters)
    torch.manual_seed(0)
    model = load_model(cfg.model, tokenizer, cfg.cache_dir)
    diagnostics = AlignmentDiagnostics.at_pretrained(model, cfg, batches, Accelerator(cpu=True))
    method = init_method(cfg.init)
    model = add_lora_adapters(model, cfg.peft, "causal", method, cfg.init)
    method.initialise(model, cfg.init, batches if method.needs_batches else None, Accelerator(cpu=True), False)
    diagnostics.measure(model, 0)
    return cfg, model, diagnostics


def random_subspace_level(n: int, r: int, trials: int = 200) -> float:
    """Monte Carlo: the mean principal-angle cosine between two independent uniformly random
    r-dimensional subspaces of R^n."""
    generator = torch.Generator().manual_seed(0)
    values = []
    for _ in range(trials):
        X, Y = torch.randn(n, r, generator=generator), torch.randn(n, r, generator=generator)
        values.append(torch.linalg.svdvals(torch.linalg.qr(X)[0].T @ torch.linalg.qr(Y)[0]).mean().item())
    return sum(values) / trials


def test_lora_one_starts_aligned_and_the_norm_is_the_hand_value():
    cfg, model, diagnostics = diagnosed(ALL_LINEAR)
    for name, layer in lora_layers(model).items():
        curves = diagnostics.layers[name]
        assert curves["cos_B"][0] == pytest.approx(1, abs=1e-5), name
        assert curves["cos_A"][0] == pytest.approx(1, abs=1e-5), name
        product = layer.lora_B[ADAPTER].weight.double() @ layer.lora_A[ADAPTER].weight.double()
        assert curves["norm"][0] == pytest.approx(layer.scaling[ADAPTER] * product.norm().item(), rel=1e-9)
    by_type = diagnostics.curves()["by_type"]
    assert set(by_type) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_default_init_is_at_random_subspace_level():
    """PEFT's default A₀ (Kaiming uniform) is independent of G: its cos_A is what random subspaces
    give, far below 1; B₀ = 0 has no column space (None), and ‖sB₀A₀‖ = 0."""
    _, model, diagnostics = diagnosed(ALL_LINEAR + ["init=default"])
    for name, layer in lora_layers(model).items():
        curves = diagnostics.layers[name]
        n = layer.lora_A[ADAPTER].weight.shape[1]
        level = random_subspace_level(n, 4)
        assert curves["cos_A"][0] == pytest.approx(level, abs=0.2), name
        assert curves["cos_A"][0] < 0.6 and curves["cos_B"][0] is None and curves["norm"][0] == 0


def test_principal_cosines_of_known_subspaces():
    """cos of a 2-plane with itself rotated by 0 and by 90° within R^3, and a 30° tilt."""
    e = torch.eye(3)
    assert principal_cosines_mean(e[:, :2] * 5, e[:, :2]) == pytest.approx(1)
    assert principal_cosines_mean(e[:, 2:], e[:, :1]) == pytest.approx(0)
    tilted = torch.stack([torch.tensor([1.0, 0, 0]), torch.tensor([0, 3**0.5 / 2, 0.5])], dim=1)
    assert principal_cosines_mean(tilted, e[:, :2]) == pytest.approx((1 + 3**0.5 / 2) / 2)


@pytest.mark.slow
def test_a_run_records_alignment_curves_and_the_figure(tmp_path):
    results = run_experiment(TINY + ["peft=qv", "peft.lora_r=4", "model.max_steps=4", "diagnostics.alignment_every=2",
                                     "wandb.mode=disabled"], tmp_path)
    alignment = results["alignment"]
    assert alignment["steps"] == [0, 2, 4]
    assert set(alignment["by_type"]) == {"q_proj", "v_proj"}
    assert alignment["by_type"]["q_proj"]["cos_B"][0] == pytest.approx(1, abs=1e-5)
    assert (tmp_path / "alignment.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "results.json").read_text())["alignment"]["steps"] == [0, 2, 4]
