"""What the gradient estimators share: the pretrained model as G sees it, the backward over the init's
micro-batches, and G's factorisation for the estimators that form G."""
import contextlib

import torch
from accelerate import Accelerator
from omegaconf import DictConfig
from peft import PeftModel

from lora_one.init.spectral import top_singular_triplets
from lora_one.progress import progress


@contextlib.contextmanager
def frozen_pretrained(model: PeftModel):
    """The pretrained model as G sees it: adapters off, dropout off (eval mode), nothing requiring
    grad. Every parameter's requires_grad and the training mode are restored afterwards."""
    saved_requires_grad = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    model.requires_grad_(False)
    model.eval()
    try:
        with model.disable_adapter():
            yield
    finally:
        for param, flag in saved_requires_grad.items():
            param.requires_grad_(flag)
        model.train(was_training)


@contextlib.contextmanager
def activations_require_grad(model: PeftModel):
    """Make the input embeddings' output require grad, so backprop runs through a network whose
    weights all are frozen, computing activation gradients only (the cost floor of any gradient)."""
    hook = model.get_input_embeddings().register_forward_hook(
        lambda module, inputs, output: output.requires_grad_(True))
    try:
        yield
    finally:
        hook.remove()


def backpropagate(model: PeftModel, batches: list[dict], accelerator: Accelerator, desc: str) -> None:
    """Backward of L_k / K for this process's share of the K = len(batches) micro-batches (every
    world_size-th one), so the gradients summed over processes are those of the mean loss."""
    my_batches = batches[accelerator.process_index :: accelerator.num_processes]
    for batch in progress(my_batches, desc=desc, unit="batch", show=accelerator.is_main_process):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        (model(**batch).loss / len(batches)).backward()


def spectrum(G: torch.Tensor, r: int, cfg: DictConfig) -> tuple:
    """(U, S, Vh, ‖G‖²_F): G's top `r` singular triplets by the `init.svd` method, and its energy."""
    return *top_singular_triplets(G, r, cfg.svd, cfg.svd_q, cfg.svd_niter), G.square().sum().item()
