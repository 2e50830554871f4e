"""Full fine-tuning (`peft=none`) through run_exp: every weight trains, one step is exactly AdamW on the
autograd gradient, a resumed run ends bit for bit where an unbroken one does, the saved model reloads
with the same held-out loss, and the LoRA-only settings are refused in one line."""
import copy
import math

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer

import run_exp
from conftest import TINY, compose_config, run_cli, run_experiment
from lora_one import ConfigError
from lora_one.config import validate_config
from lora_one.data import encode_rows, load_splits, make_batches, make_collator
from lora_one.models import load_model, load_tokenizer
from lora_one.train import build_optimizer, build_scheduler, evaluate_loss, train
from lora_one.train.loop import training_loss

FULL = TINY + ["peft=none", "init=default", "wandb.mode=disabled"]
RUN = FULL + ["model.max_steps=6", "checkpoint.every_n_steps=2", "checkpoint.keep=3", "checkpoint.keep_final=true"]


def base_model(cfg):
    """The tiny model run_exp starts from (its random weights come from the seeded global RNG)."""
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    set_seed(cfg.seed)
    return load_model(cfg.model, tokenizer, cfg.cache_dir), tokenizer


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    """One 6-step full fine-tuning run, checkpointed at steps 2, 4 and 6."""
    out = tmp_path_factory.mktemp("unbroken")
    return out, run_experiment(RUN, out)


def test_one_step_is_adamw_on_every_weight(tmp_path):
    """run_exp's full-FT model, optimizer and loop for one step (clipping on, weight decay on) against
    AdamW's first step written out: p ← p(1 − η·λ) − η·m̂/(√v̂ + ε) with m̂ = ĝ, v̂ = ĝ², ĝ the autograd
    gradient of a copy scaled by min(1, c/‖g‖)."""
    lr, decay, clip, eps = 1e-2, 0.1, 0.5, 1e-8
    cfg = compose_config(FULL + [f"model.learning_rate={lr}", f"model.weight_decay={decay}",
                                 f"optim.max_grad_norm={clip}"])
    model, tokenizer = base_model(cfg)
    examples, _ = load_splits(cfg.dataset, cfg.seed)
    [batch] = make_batches(tokenizer, encode_rows(tokenizer, examples[:4], cfg.model.max_length, False), 4, 1)
    experiment = run_exp.Experiment(cfg, str(tmp_path))
    experiment.eval_loader, experiment.init_batches = [batch], None
    model, info = experiment.init_adapters(model)
    accelerator = experiment.accelerator
    assert info["eval_loss_base"] == info["eval_loss_after_init"] and info["init_layers"] == {}

    reference = copy.deepcopy(model).requires_grad_(True)  # the gradient of every weight, whatever the run froze
    names, params = zip(*reference.named_parameters())
    # the loss as training computes it (the head at labelled positions: equal to model(**batch).loss, which
    # tests/train/test_loop.py checks); AdamW's first step divides g by |g| + ε, so a gradient of the tied
    # embedding that is rounding noise in one summation order flips sign in the other
    grads = torch.autograd.grad(training_loss(reference)(reference, batch), params)
    norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
    assert norm > clip  # the clipping is exercised
    scale = clip / (norm + 1e-6)
    expected = {name: p.detach() * (1 - lr * decay) - lr * (scale * g) / ((scale * g).abs() + eps)
                for name, p, g in zip(names, params, grads)}

    optimizer = build_optimizer(model, cfg.optim, cfg.model)
    assert isinstance(optimizer, torch.optim.AdamW)
    scheduler = build_scheduler(optimizer, cfg.model, 1)
    model, optimizer = accelerator.prepare(model, optimizer)
    train(model, optimizer, scheduler, [batch], accelerator, 1, cfg.optim.max_grad_norm, torch.Generator())
    after = dict(accelerator.unwrap_model(model).named_parameters())
    assert after.keys() == expected.keys() and len(after) == len(list(reference.parameters()))
    for name, p in reference.named_parameters():
        assert not torch.equal(after[name], p), f"{name} did not train"
        torch.testing.assert_close(after[name].detach(), expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_run_trains_every_weight_and_checkpoints_them_all(unbroken):
    out, results = unbroken
    cfg = compose_config(RUN)
    model, _ = base_model(cfg)
    weights = dict(model.named_parameters())
    assert results["trainable_params"] == results["total_params"] == sum(p.numel() for p in weights.values())
    assert results["steps"] == 6 and results["init_method"] is None and results["rank_pattern"] == {}
    assert results["eval_loss"] < results["eval_loss_base"] == results["eval_loss_after_init"]
    assert (out / "merged" / "model.safetensors").exists() and not (out / "adapter").exists()
    checkpoint = out / "checkpoints" / "step_2"
    saved = load_file(checkpoint / "trainable.safetensors")
    assert saved.keys() == weights.keys() and all(not torch.equal(saved[n], w) for n, w in weights.items())
    adam = torch.load(checkpoint / "optimizer.pt", weights_only=False)["state"]  # in the parameters' order
    assert len(adam) == len(weights)
    assert all(s["exp_avg"].shape == s["exp_avg_sq"].shape == w.shape for s, w in zip(adam.values(), weights.values()))


def test_resume_after_two_steps_matches_the_unbroken_run_bit_for_bit(unbroken, tmp_path):
    out, results = unbroken
    resumed = run_experiment(RUN + [f"resume={out / 'checkpoints' / 'step_2'}"], tmp_path)
    assert resumed["resumed_from"].endswith("step_2") and resumed["steps"] == 6
    assert resumed["train_loss_curve"] == results["train_loss_curve"] and resumed["eval_loss"] == results["eval_loss"]
    ours, theirs = load_file(tmp_path / "merged" / "model.safetensors"), load_file(out / "merged" / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_saved_model_reloads_with_the_same_held_out_loss(unbroken):
    out, results = unbroken
    cfg = compose_config(RUN)
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    model = AutoModelForCausalLM.from_pretrained(out / "merged")
    _, held_out = load_splits(cfg.dataset, cfg.seed)
    loader = DataLoader(encode_rows(tokenizer, held_out, cfg.model.max_length, False),
                        batch_size=cfg.model.per_device_batch_size, collate_fn=make_collator(tokenizer))
    assert evaluate_loss(model, loader, Accelerator(cpu=True)) == pytest.approx(results["eval_loss"], abs=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (["optim=scaled_adamw"], "optim=scaled_adamw is a LoRA optimizer and peft=none .* use optim=adamw"),
    (["optim=scaled_sgd"], "optim=scaled_sgd is a LoRA optimizer"),
    (["optim=lora_pro"], "optim=lora_pro is a LoRA optimizer"),
    (["optim=loraplus"], "optim=loraplus is a LoRA optimizer"),
    (["init=gradient", "init.direction=LoRA-GA"],
     r"init=gradient \(LoRA-GA\) initialises LoRA adapters .* use init=default"),
    (["init=pissa"], r"init=pissa \(PiSSA\) initialises LoRA adapters"),
    (["init=eva"], r"init=eva \(EVA\) initialises LoRA adapters"),
    (["init=gaussian"], r"init=gaussian \(gaussian\) initialises LoRA adapters"),
    (["diagnostics.alignment_every=2"], "diagnostics.alignment_every measures LoRA factors .* set it to 0"),
])
def test_lora_only_settings_are_refused_in_one_line(overrides, message):
    validate_config(compose_config(FULL))  # the accepted spelling
    with pytest.raises(ConfigError, match=message) as refused:
        validate_config(compose_config(FULL + overrides))
    assert "\n" not in str(refused.value)


def test_cli_names_the_init_to_write(tmp_path):
    """`peft=none` alone keeps the default init=gradient: refused before any work, saying what to write."""
    done = run_cli(["model=tiny_llama", "peft=none"], tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr and not (tmp_path / "results.json").exists()
    assert done.stderr.strip().splitlines()[-1] == (
        "error: init=gradient (LoRA-One) initialises LoRA adapters and peft=none (full fine-tuning) has none: "
        "use init=default (the pretrained weights as they are)")
