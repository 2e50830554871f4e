"""The training loop and the held-out loss (Accelerate: one CPU, many GPUs, many nodes)."""
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from lora_one.data.encoding import IGNORE_INDEX
from lora_one.progress import progress

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """The training loss or the gradient norm of a step is NaN or ±inf: training stops before that
    step's update, so no weight (and no checkpoint) is ever non-finite."""


@torch.no_grad()
def evaluate_loss(model, loader, accelerator: Accelerator) -> float:
    """Mean over the held-out batches of each batch's mean token loss (dropout off). Logged at the
    start and the end, with the pass's progress in between (lora_one.progress)."""
    if len(loader) == 0:
        raise ValueError("the held-out set is empty: no eval loss")
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    log.info("held-out loss: %d batches per process…", len(loader))
    losses = []
    for batch in progress(loader, desc="held-out loss", unit="batch", show=accelerator.is_main_process):
        losses.append(model(**batch).loss.detach().reshape(1))
    model.train(was_training)
    mean = accelerator.gather_for_metrics(torch.cat(losses)).mean().item()
    log.info("held-out loss %.4f (%d batches, %.1f s)", mean, len(losses), time.perf_counter() - start)
    return mean


def causal_lm_loss(model, batch) -> torch.Tensor:
    """The mean token cross-entropy `model(**batch).loss` computes, with the vocabulary head applied only
    at the positions whose next token some row labels (`logits_to_keep`): a GLUE row labels 1-3 of ~60
    tokens, and SmolLM2's head is ~20 % of its forward. Same loss and gradients (bench/README.md)."""
    labels = batch["labels"]
    # what each position predicts
    following = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], dim=1)
    keep = (following != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    return F.cross_entropy(logits.float().flatten(0, 1), following[:, keep].flatten(), ignore_index=IGNORE_INDEX)


def training_loss(model) -> Callable:
    """`causal_lm_loss` for a transformers causal LM; else the model's own loss (T5's decoder reads only labels)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return lambda wrapped, batch: wrapped(**batch).loss
    return causal_lm_loss


@dataclass
class TrainState:
    """Where training stands: with the weights, optimizer, schedule and RNG states, all a checkpoint
    needs to continue exactly as if never stopped."""
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches this process has drawn in the current epoch
    epoch_shuffle_state: torch.Tensor | None = None  # the shuffle generator's state when the epoch began
    loss: list = field(default_factory=list)  # per optimizer step, averaged over processes
    lr: list = field(default_factory=list)
    grad_norm: list = field(default_factory=list)
    eval_loss: list = field(default_factory=list)  # [step, held-out loss] pairs measured during training
    alignment: dict = field(default_factory=dict)  # the alignment diagnostics so far (AlignmentDiagnostics.points)
    tokens: int = 0  # non-padding tokens seen, all processes
    train_seconds: float = 0.0
    interrupted: bool = False  # stopped early on request (preemption), after the callbacks saw it

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.train_seconds, 1e-9)


def train(model, optimizer, scheduler, loader, accelerator: Accelerator, total_steps: int, max_grad_norm: float,
          shuffle: torch.Generator, state: TrainState | None = None,
          callbacks: Sequence[Callable[[TrainState, bool], None]] = (),
          stop_requested: Callable[[], bool] = lambda: False, log_every: int = 0) -> TrainState:
    """Run optimizer steps until `total_steps` (each `gradient_accumulation_steps` micro-batches per
    process, cycling over epochs), continuing from `state` if given. The schedule is stepped once per
    optimizer step, by hand, so it is the same for any number of processes.

    `shuffle` is the generator of the loader's shuffling: its state at the start of each epoch goes
    into the state, so a resumed run replays the same permutation and skips the batches already
    drawn. After each step, each of `callbacks(state, stopping)` runs in order on every process (logging,
    held-out loss, checkpoints: train/callbacks.py); `stopping` is true once any process's `stop_requested()`
    was, and training ends.

    Before each update the loss and the gradient norm (all-reduced: every process decides alike) must be
    finite, else NonFiniteLoss names the step and nothing is updated. The norm is computed even without
    clipping (`max_grad_norm` 0/None: a max of inf, which scales by exactly 1). The steps show as
    any stage's progress (lora_one.progress, with the last loss); every `log_every` steps, and at
    the last, one line with the loss, lr, gradient norm and throughput goes to the log."""
    state = state or TrainState()
    params = [p for p in model.parameters() if p.requires_grad]
    loss_of = training_loss(accelerator.unwrap_model(model))
    window_loss, window_batches, window_tokens = 0.0, 0, 0
    steps = progress(desc="train", total=total_steps, initial=state.step, unit="step", show=accelerator.is_main_process)
    model.train()
    start, seconds_before = time.perf_counter(), state.train_seconds
    while state.step < total_steps and not state.interrupted:
        if state.batches_in_epoch:  # resumed mid-epoch: same permutation, minus the batches already used
            shuffle.set_state(state.epoch_shuffle_state)
            batches = accelerator.skip_first_batches(loader, state.batches_in_epoch)
        else:
            state.epoch_shuffle_state = shuffle.get_state()
            batches = loader
        for batch in batches:
            state.batches_in_epoch += 1
            with accelerator.accumulate(model):
                loss = loss_of(model, batch)
                accelerator.backward(loss)
                window_loss += loss.detach().float()
                window_batches += 1
                window_tokens += batch["attention_mask"].sum()  # stays on the device: no sync per micro-batch
                if not accelerator.sync_gradients:
                    continue
                grad_norm = float(accelerator.clip_grad_norm_(params, max_grad_norm or math.inf))
                # one collective per step: loss, tokens and the stop flag of every process
                local = torch.tensor([float(window_loss / window_batches), float(window_tokens),
                                      float(stop_requested())], dtype=torch.float64, device=accelerator.device)
                step_loss, step_tokens, stops = accelerator.reduce(local, reduction="sum").tolist()
                step_loss /= accelerator.num_processes
                if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
                    raise NonFiniteLoss(f"step {state.step + 1}: the training loss is {step_loss:.4g} and the gradient "
                                        f"norm {grad_norm:.4g}; stopped before updating (no checkpoint of this step): "
                                        "lower model.learning_rate, or check the data and model.dtype")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.loss.append(step_loss)
            state.lr.append(scheduler.get_last_lr()[0])
            state.grad_norm.append(grad_norm)
            state.tokens += int(step_tokens)
            scheduler.step()
            state.step += 1
            state.train_seconds = seconds_before + time.perf_counter() - start
            window_loss, window_batches, window_tokens = 0.0, 0, 0
            steps.set_postfix(loss=f"{state.loss[-1]:.4f}", refresh=False)  # shown with the update: no extra log line
            steps.update(1)
            if accelerator.is_main_process and log_every and (state.step % log_every == 0 or state.step == total_steps):
                log.info("step %d/%d: loss %.4f, lr %.3g, grad norm %.3g, %.0f tokens/s", state.step, total_steps,
                         state.loss[-1], state.lr[-1], grad_norm, state.tokens_per_s)
            for callback in callbacks:
                callback(state, stops > 0)
            if stops > 0:
                state.interrupted = True
                break
            if state.step >= total_steps:
                break
        else:  # the epoch ran out
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
    steps.close()
    return state
