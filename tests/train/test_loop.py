"""The training loop: the loss with the vocabulary head only at labelled positions equals the model's own
loss (transformers' shifted mean token cross-entropy over every position), value and gradients; a
non-finite step stops the run before its update, with one line on the command line."""
import os
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from conftest import QUICK, TINY, assert_error, compose_config, run_cli
from lora_one.data import encode_rows, make_collator
from lora_one.init import METHODS
from lora_one.models import add_lora_adapters, load_model, load_tokenizer
from lora_one.train import train
from lora_one.train.loop import NonFiniteLoss, TrainState, causal_lm_loss, training_loss

EXAMPLES = [{"prompt": "sst2 sentence: a gorgeous, witty film", "response": "positive"},
            {"prompt": "sst2 sentence: it drags", "response": "negative"},
            {"prompt": "Question: 2 + 3?\nAnswer:", "response": "5, since 2 + 3 = 5"}]


def tiny_lora_model(option: str):
    cfg = compose_config(TINY + [f"model={option}", "peft=all"])
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    torch.manual_seed(0)
    model = add_lora_adapters(load_model(cfg.model, tokenizer, cfg.cache_dir), cfg.peft, cfg.model.type,
                              METHODS["LoRA"], cfg.init)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.2)
    return model, tokenizer


def loss_and_gradients(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_head_at_labelled_positions_gives_the_models_loss_and_gradients():
    """Right-padded rows whose labels start at different positions (prompts of different lengths)."""
    model, tokenizer = tiny_lora_model("tiny_llama")
    model.eval()  # no dropout: the two forwards see the same network
    batch = dict(make_collator(tokenizer)(encode_rows(tokenizer, EXAMPLES, 64, seq2seq=False)))
    assert len({(row != -100).nonzero()[0].item() for row in batch["labels"]}) == 3
    expected, expected_grads = loss_and_gradients(model, model(**batch).loss)
    value, grads = loss_and_gradients(model, causal_lm_loss(model, batch))
    assert value == pytest.approx(expected, rel=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_seq2seq_models_keep_their_own_loss():
    model, _ = tiny_lora_model("tiny_t5")
    assert training_loss(model) is not causal_lm_loss
    assert training_loss(tiny_lora_model("tiny_llama")[0]) is causal_lm_loss


# --- non-finite steps --------------------------------------------------------------------------------

class Regression(nn.Module):
    """loss = mean((w·x − y)²), plus √(w − w.detach()) on a batch with `spike`: that term is 0 but its
    gradient is +inf, so the loss stays finite and the gradient does not."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def forward(self, x, y, spike, attention_mask):
        loss = (((x * self.w).sum(-1) - y) ** 2).mean()
        if spike.any():
            loss = loss + torch.sqrt(self.w - self.w.detach()).sum()
        return SimpleNamespace(loss=loss)


def toy_batches(bad_step: int, kind: str) -> list[dict]:
    """One example per step; step `bad_step` (1-based) has a NaN input (NaN loss) or the inf gradient."""
    rows = []
    for step in range(1, 6):
        x = torch.full((3,), float(step))
        if step == bad_step and kind == "nan loss":
            x[0] = float("nan")
        spike = torch.tensor(1.0 if step == bad_step and kind == "inf gradient" else 0.0)
        rows.append({"x": x, "y": torch.tensor(1.0), "spike": spike, "attention_mask": torch.ones(2)})
    return rows


@pytest.mark.parametrize("kind", ["nan loss", "inf gradient"])
@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0])  # with and without clipping
def test_a_non_finite_step_stops_before_its_update(kind, max_grad_norm):
    accelerator = Accelerator(cpu=True)
    model = Regression()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loader = DataLoader(toy_batches(3, kind), batch_size=1)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    seen = []
    with pytest.raises(NonFiniteLoss,
                       match=r"^step 3: the training loss is (nan|\d\S*) and the gradient norm (nan|inf)"):
        train(model, optimizer, scheduler, loader, accelerator, 5, max_grad_norm, torch.Generator(), TrainState(),
              [lambda state, stopping: seen.append((state.step, model.w.detach().clone()))])
    assert [step for step, _ in seen] == [1, 2]  # the callbacks (checkpoints) never saw step 3
    assert torch.isfinite(model.w).all() and torch.equal(model.w.detach(), seen[-1][1])  # step 3 updated nothing


@pytest.mark.slow
def test_cli_stops_at_the_first_non_finite_step_and_writes_no_nan_checkpoint(tmp_path):
    """A learning rate of 1e30 makes step 1's update huge and step 2's loss non-finite."""
    proc = run_cli(QUICK + ["model.max_steps=4", "model.learning_rate=1e30", "checkpoint.every_n_steps=1"], tmp_path)
    assert_error(proc, r"^error: step 2: the training loss is (nan|inf) and the gradient norm \S+; stopped before "
                       r"updating \(no checkpoint of this step\)", mid_run=True)
    from safetensors.torch import load_file

    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step_1"]
    weights = load_file(tmp_path / "checkpoints" / "step_1" / "trainable.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (tmp_path / "results.json").exists()
