"""`streaming`: the exact one-step full gradient at about a LoRA step's memory: every target weight's G
is factorised the moment autograd has finished summing it, then freed.

The K init micro-batches are padded into ONE batch and backpropagated ONCE. Autograd then walks the
network block by block, top down, over all K micro-batches together, so a weight's gradient is
complete (its post-accumulate-grad hook fires, once) as soon as the backward leaves its block; the
hook keeps only the top singular triplets and ‖G‖²_F. What the batch of K micro-batches would cost
in activations is bounded two ways:

- each transformer block runs under non-reentrant activation checkpointing, so between the forward
  and the backward only the blocks' inputs are kept, and one block at a time is recomputed (with
  reentrant checkpointing each block would run its own backward, and a hook would no longer see one
  complete sum);
- the output head (vocabulary-sized logits) is evaluated one micro-batch at a time, also
  checkpointed, so the logits of one micro-batch exist at any moment, as in a LoRA training step.

The loss is that of `exact_full_gradient` (estimators/exact.py): (1/K) Σ_k L_k with L_k micro-batch k's mean
token loss, written as one token-weighted sum Σ_t w_t ℓ_t with w_t = 1/(K·n_k) for the n_k labelled tokens of k.
"""
import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, send_to_device
from omegaconf import DictConfig
from peft import PeftModel
from torch.utils.checkpoint import checkpoint

from lora_one.data.encoding import IGNORE_INDEX
from lora_one.init.estimators.shared import frozen_pretrained, spectrum
from lora_one.models.adapters import lora_layers
from lora_one.progress import progress

Factorise = Callable[[str, torch.Tensor], object]


def concatenate_micro_batches(batches: list[dict], num_micro_batches: int, seq2seq: bool):
    """One right-padded batch of all `batches` (padding is masked and unlabelled, so right padding
    leaves every real token's computation unchanged), the targets each output position predicts
    (causal: the next label; seq2seq: the label itself) and their loss weights 1/(K·n_k)."""
    length = max(b["input_ids"].shape[1] for b in batches)
    label_length = max(b["labels"].shape[1] for b in batches)

    def pad(tensor, size, value):
        return F.pad(tensor, (0, size - tensor.shape[1]), value=value)

    input_ids = torch.cat([pad(b["input_ids"], length, 0) for b in batches])
    attention_mask = torch.cat([pad(b["attention_mask"], length, 0) for b in batches])
    labels = torch.cat([pad(b["labels"], label_length, IGNORE_INDEX) for b in batches])
    targets = labels if seq2seq else F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    weights = torch.zeros(targets.shape, dtype=torch.float32)
    row = 0
    for batch in batches:
        rows = slice(row, row + batch["input_ids"].shape[0])
        labelled = targets[rows] != IGNORE_INDEX
        weights[rows] = labelled / (num_micro_batches * labelled.sum().clamp(min=1))
        row = rows.stop
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}, targets, weights


@contextlib.contextmanager
def replaced_forward(module: torch.nn.Module, forward):
    """Call `forward` instead of the module's own (an instance attribute shadows the class method)."""
    module.forward = forward
    try:
        yield
    finally:
        del module.forward


def transformer_blocks(model: PeftModel) -> list[torch.nn.Module]:
    """The model's transformer blocks: its `_no_split_modules` classes (e.g. LlamaDecoderLayer, T5Block)."""
    block_classes = set(getattr(model.get_base_model(), "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in block_classes]


@contextlib.contextmanager
def checkpointed_blocks(model: PeftModel):
    """Run every transformer block under non-reentrant activation checkpointing."""
    blocks = transformer_blocks(model)
    with contextlib.ExitStack() as stack:
        for block in blocks:
            original = block.forward
            stack.enter_context(replaced_forward(block, lambda *args, original=original, **kwargs: checkpoint(
                original, *args, use_reentrant=False, **kwargs)))
        yield len(blocks)


@contextlib.contextmanager
def forward_progress(model: PeftModel, show: bool):
    """The forward's progress, one block at a time: a module hook fires once per block call, never when
    checkpointing recomputes the block during the backward (that calls the block's `forward` directly)."""
    blocks = transformer_blocks(model)
    forward = progress(desc="one-step gradient: forward", total=len(blocks), unit="block", show=show)

    def count(*_) -> None:  # returns None: a forward hook's return value would replace the block's output
        forward.update()

    hooks = [block.register_forward_hook(count) for block in blocks]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        forward.close()


@contextlib.contextmanager
def weighted_loss_at_head(model: PeftModel, targets: torch.Tensor, weights: torch.Tensor, rows_per_chunk: int):
    """Replace the output head by the loss Σ_t w_t ℓ_t(head(h_t), target_t), evaluated `rows_per_chunk`
    rows at a time under checkpointing; the model's logits come back empty. Yields a list that
    receives the loss."""
    head = model.get_output_embeddings()
    original = head.forward
    losses = []

    def chunk_loss(hidden, chunk_targets, chunk_weights):
        logits = original(hidden).float()
        token_loss = F.cross_entropy(logits.flatten(0, 1), chunk_targets.flatten().clamp(min=0), reduction="none")
        return (token_loss * chunk_weights.flatten()).sum()

    def loss_instead_of_logits(hidden):
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], rows_per_chunk):
            rows = slice(start, start + rows_per_chunk)
            total = total + checkpoint(chunk_loss, hidden[rows], targets[rows], weights[rows], use_reentrant=False)
        losses.append(total)
        return hidden.new_empty(hidden.shape[0], 0, head.out_features)

    with replaced_forward(head, loss_instead_of_logits):
        yield losses


def svd_owners(shapes: dict[str, tuple[int, int]], processes: int) -> dict[str, int]:
    """The process that factorises each layer's G: the costliest first, each to the least loaded process so far
    (a full SVD of an m×n matrix costs ∝ m·n·min(m, n)); the same answer on every process."""
    load, owners = [0] * processes, {}
    for name, (m, n) in sorted(shapes.items(), key=lambda item: (-item[1][0] * item[1][1] * min(item[1]), item[0])):
        owners[name] = min(range(processes), key=load.__getitem__)
        load[owners[name]] += m * n * min(m, n)
    return owners


def streaming_spectra(model: PeftModel, batches: list[dict], accelerator: Accelerator, factorise: Factorise,
                      seq2seq: bool, checkpointing: bool = True, owners: dict[str, int] | None = None
                      ) -> dict[str, object]:
    """{layer: factorise(layer, G)} for every LoRA target weight, G as in `exact_full_gradient`, from
    one backward over this process's share of `batches`; at most about one block's G exists at once.

    With several processes each layer's partial G is reduced (summed) inside its hook onto the one process that
    factorises it, `owners[layer]` (default `svd_owners`: the SVD work divided between processes, not repeated);
    after the backward each owner's result reaches every process. `checkpointing=False` keeps all activations
    (faster, K micro-batches' memory)."""
    K = len(batches)
    mine = batches[accelerator.process_index :: accelerator.num_processes]
    if not mine:
        raise ValueError(f"{K} init micro-batches cannot be shared by {accelerator.num_processes} processes")
    device = accelerator.device
    batch, targets, weights = concatenate_micro_batches(mine, K, seq2seq)
    batch, targets, weights = {k: v.to(device) for k, v in batch.items()}, targets.to(device), weights.to(device)
    labels = batch.pop("labels")  # the loss is computed at the head from `targets`, not by the model
    if seq2seq:
        batch["decoder_input_ids"] = model.get_base_model().prepare_decoder_input_ids_from_labels(labels=labels)
    weights_by_name = {name: layer.get_base_layer().weight for name, layer in lora_layers(model).items()}
    spectra = {}
    show = accelerator.is_main_process

    several = accelerator.num_processes > 1
    if several and owners is None:
        owners = svd_owners({name: tuple(weight.shape) for name, weight in weights_by_name.items()},
                            accelerator.num_processes)

    def on_complete(param, name):
        G = param.grad.float()
        param.grad = None
        if name in spectra:
            raise RuntimeError(f"the gradient of {name} was completed twice: the backward was not one pass")
        if several:  # hooks fire in the same order on every process: the reduces pair up
            torch.distributed.reduce(G, dst=owners[name])
            if accelerator.process_index != owners[name]:
                spectra[name] = None  # its owner's, after the backward
                factorised.update()
                return
        spectra[name] = factorise(name, G)
        factorised.update()

    hooks = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(frozen_pretrained(model))
        if checkpointing:
            stack.enter_context(checkpointed_blocks(model))
        losses = stack.enter_context(weighted_loss_at_head(model, targets, weights, mine[0]["input_ids"].shape[0]))
        try:
            for name, weight in weights_by_name.items():
                weight.requires_grad_(True)
                hooks.append(weight.register_post_accumulate_grad_hook(lambda p, name=name: on_complete(p, name)))
            with forward_progress(model, show):
                model(**batch, use_cache=False)
            # the backward's progress: each target weight's hook (on_complete) counts its G, factorised
            with progress(desc="one-step gradient: backward, G factorised", total=len(weights_by_name), unit="layer",
                          show=show) as factorised:
                losses[0].backward()
        finally:
            for hook in hooks:
                hook.remove()
    missing = weights_by_name.keys() - spectra.keys()
    if missing:
        raise RuntimeError(f"no gradient reached {sorted(missing)[:3]}: these layers do not affect the loss")
    if several:
        for name in weights_by_name:  # the same order everywhere; via CPU: an owner's GPU is not the receiver's
            shared = [send_to_device(spectra[name], "cpu")]
            broadcast_object_list(shared, from_process=owners[name])
            spectra[name] = send_to_device(shared[0], device)
    return spectra


def estimate(model: PeftModel, cfg: DictConfig, batches: list[dict], accelerator: Accelerator,
             needed: dict[str, int], seq2seq: bool):
    """(G per layer if `init.save_artifacts`, else None; {layer: (U, S, Vh, ‖G‖²_F)}), from one backward:
    with `save_artifacts` a CPU copy of each G is kept as it completes, for init/gradients.safetensors."""
    kept = {} if cfg.save_artifacts else None

    def factorise_and_keep(name, G):
        if kept is not None:
            kept[name] = G.cpu()
        return spectrum(G, needed[name], cfg)

    checkpointing = {"auto": len(batches) > accelerator.num_processes, True: True, False: False}[cfg.checkpointing]
    # init/gradients.safetensors is written by the main process: then it factorises every layer (the others wait)
    owners = {name: 0 for name in needed} if kept is not None else None
    spectra = streaming_spectra(model, batches, accelerator, factorise_and_keep, seq2seq, checkpointing, owners)
    return kept, spectra
