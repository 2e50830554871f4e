"""DoRA with every init, and DoRA-One: after a gradient init the magnitude is rebuilt as the row norms
of W + s·B₀A₀, so the initial DoRA model is exactly the init's model W − (s/(γσ₁))[G]_r."""
import copy
import json

import pytest
import torch
from accelerate import Accelerator
from peft import PeftModel
from peft.tuners.lora.dora import DoraLinearLayer
from safetensors.torch import load_file

from conftest import TINY, autograd_reference, build, rank_r, run_experiment
from lora_one.init import init_method, save_initial_adapter
from lora_one.init.dora import restore_exported_magnitudes
from lora_one.models import lora_layers
from lora_one.models.adapters import ADAPTER

DORA = ["peft=qv", "peft.lora_r=4", "peft.use_dora=true"]
INITS = {"LoRA": ["init=default"], "gaussian": ["init=gaussian"], "PiSSA": ["init=pissa"], "EVA": ["init=eva"],
         "LoRA-One": ["init.direction=LoRA-One"], "LoRA-GA": ["init.direction=LoRA-GA"]}


def initialised(overrides):
    cfg, model, base, batches = build(overrides)
    method = init_method(cfg.init)
    method.initialise(model, cfg.init, batches if method.needs_batches else None, Accelerator(cpu=True), False)
    return cfg, model.eval(), base.eval(), batches


def row_norms(layer) -> torch.Tensor:
    """‖W + s·BA‖ per output row, by hand in float64."""
    W = layer.get_base_layer().weight.double()
    BA = layer.lora_B[ADAPTER].weight.double() @ layer.lora_A[ADAPTER].weight.double()
    return (W + layer.scaling[ADAPTER] * BA).norm(dim=1)


@pytest.mark.parametrize("name", sorted(INITS))
def test_magnitude_is_the_norm_of_the_initialised_weight(name):
    """Every init: m = ‖W + s·B₀A₀‖ (hand, float64) = PEFT's own get_weight_norm on the same weights."""
    _, model, _, _ = initialised(INITS[name] + DORA)
    for layer in lora_layers(model).values():
        magnitude = layer.lora_magnitude_vector[ADAPTER].weight
        assert magnitude.requires_grad
        torch.testing.assert_close(magnitude.double(), row_norms(layer), rtol=1e-6, atol=1e-7)
        lora_weight = layer.lora_B[ADAPTER].weight @ layer.lora_A[ADAPTER].weight
        peft_norm = DoraLinearLayer(fan_in_fan_out=False).get_weight_norm(
            layer.get_base_layer().weight, lora_weight.detach(), layer.scaling[ADAPTER])
        torch.testing.assert_close(magnitude, peft_norm, rtol=0, atol=0)


def test_without_the_rebuild_the_magnitude_would_be_wrong():
    """PEFT's wrap-time magnitude is ‖W‖; LoRA-One's B₀A₀ changes the row norms, so keeping it would
    change the model: the rebuild is what makes DoRA-One exact."""
    _, model, _, _ = initialised(INITS["LoRA-One"] + DORA)
    layer = next(iter(lora_layers(model).values()))
    wrap_time = layer.get_base_layer().weight.double().norm(dim=1)
    assert (row_norms(layer) - wrap_time).abs().max() > 1e-4


@pytest.fixture(scope="module")
def dora_one():
    cfg, model, base, batches = initialised(INITS["LoRA-One"] + DORA)
    return cfg, model, base, batches


def test_dora_one_output_is_the_spectral_step(dora_one):
    """Output after a LoRA-One/DoRA init = that of W − (s/(γσ₁))[G]_r (G by autograd on the base), = that
    of DoRA's W' = m ⊙ (W + sBA)/‖W + sBA‖ written by hand, = the plain LoRA-One init's output."""
    cfg, model, base, batches = dora_one
    layers = lora_layers(model)
    G = autograd_reference(copy.deepcopy(base), batches, list(layers))
    s = cfg.peft.lora_alpha / cfg.peft.lora_r
    _, plain, _, _ = initialised(INITS["LoRA-One"] + ["peft=qv", "peft.lora_r=4"])
    spectral, by_hand = copy.deepcopy(base), copy.deepcopy(base)
    weights, hand_weights = dict(spectral.named_parameters()), dict(by_hand.named_parameters())
    with torch.no_grad():
        for name, layer in layers.items():
            sigma1 = torch.linalg.svdvals(G[name].double())[0]
            step = weights[name].double() - s / (cfg.init.stable_gamma * sigma1) * rank_r(G[name], cfg.peft.lora_r)
            weights[name].copy_(step.float())
            W = layer.get_base_layer().weight.double()
            direction = W + s * layer.lora_B[ADAPTER].weight.double() @ layer.lora_A[ADAPTER].weight.double()
            m = layer.lora_magnitude_vector[ADAPTER].weight.double()
            hand_weights[name].copy_((m[:, None] * direction / direction.norm(dim=1, keepdim=True)).float())
        for batch in batches:
            got = model(**batch).logits
            torch.testing.assert_close(got, spectral(**batch).logits, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(got, by_hand(**batch).logits, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got, plain(**batch).logits, rtol=1e-5, atol=1e-5)
            assert (got - base(**batch).logits).abs().max() > 1e-3  # the init did move the model


def test_training_lowers_the_loss_then_save_merge_reload_round_trip(dora_one, tmp_path):
    """A few AdamW steps on the init batches lower their loss and move m; the trained adapter saved and
    reloaded on a fresh base, and merged into it, give the trained model's output."""
    _, model, base, batches = dora_one
    model = copy.deepcopy(model).train()
    magnitude0 = {n: l.lora_magnitude_vector[ADAPTER].weight.detach().clone() for n, l in lora_layers(model).items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    def loss():
        return sum(model(**b).loss for b in batches) / len(batches)

    with torch.no_grad():
        before = loss().item()
    for _ in range(5):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = loss().item()
    assert after < before - 0.05, (before, after)
    assert any(not torch.equal(l.lora_magnitude_vector[ADAPTER].weight, magnitude0[n])
               for n, l in lora_layers(model).items())
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter").eval()
    merged = copy.deepcopy(model).merge_and_unload().eval()
    with torch.no_grad():
        for batch in batches:
            trained = model(**batch).logits
            torch.testing.assert_close(reloaded(**batch).logits, trained, rtol=0, atol=0)
            torch.testing.assert_close(merged(**batch).logits, trained, rtol=1e-4, atol=1e-4)


def test_lora_ga_dora_exports_against_the_original_base(tmp_path):
    """LoRA-GA moves the base; its DoRA adapter, converted against the initial adapter as run_exp saves
    it, reproduces the model on the untouched base (PEFT's conversion drops m: restored after saving)."""
    _, model, base, batches = initialised(INITS["LoRA-GA"] + DORA)
    save_initial_adapter(model, str(tmp_path / "init"))
    with torch.no_grad():
        for layer in lora_layers(model).values():  # stand-in for training: move B, A and m
            layer.lora_B[ADAPTER].weight.mul_(1.5)
            layer.lora_A[ADAPTER].weight.add_(0.01)
            layer.lora_magnitude_vector[ADAPTER].weight.mul_(1.01)
    model.save_pretrained(tmp_path / "adapter", path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    restore_exported_magnitudes(model, str(tmp_path / "adapter"))
    reloaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batches[0]).logits, model(**batches[0]).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_resume_restores_the_magnitude(tmp_path):
    """m is trainable, so it is in the checkpoint: a run resumed from step 2 ends where an unbroken one does."""
    run = TINY + DORA + ["model.max_steps=4", "checkpoint.every_n_steps=2", "checkpoint.keep=2",
                         "checkpoint.keep_final=true", "wandb.mode=disabled"]
    unbroken = run_experiment(run, tmp_path / "unbroken")
    saved = load_file(tmp_path / "unbroken" / "checkpoints" / "step_2" / "trainable.safetensors")
    assert any("lora_magnitude_vector" in k for k in saved)
    resumed = run_experiment(run + [f"resume={tmp_path / 'unbroken' / 'checkpoints' / 'step_2'}"], tmp_path / "resumed")
    assert resumed["resumed_from"].endswith("step_2")
    assert resumed["eval_loss"] == pytest.approx(unbroken["eval_loss"], abs=1e-5)
    assert json.loads((tmp_path / "resumed" / "results.json").read_text())["steps"] == 4
