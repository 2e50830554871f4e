"""The training loss with the vocabulary head only at labelled positions equals the model's own loss
(transformers' shifted mean token cross-entropy over every position), value and gradients."""
import pytest
import torch

from conftest import TINY, compose_config
from lora_one.data import encode_rows, make_collator
from lora_one.init import METHODS
from lora_one.models import add_lora_adapters, load_model, load_tokenizer
from lora_one.train.loop import causal_lm_loss, training_loss

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
