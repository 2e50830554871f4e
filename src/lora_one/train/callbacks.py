"""What runs after each optimizer step besides the update, one small callback each: `callback(state,
stopping)`, called by the training loop on every process in the order given (the checkpoint's,
`Checkpointer.after_step`, comes last, so it holds what the others recorded in the state)."""
from typing import Callable

from lora_one.train.loop import TrainState

StepCallback = Callable[[TrainState, bool], None]


def log_step(tracker) -> StepCallback:
    """The step's loss, learning rate, gradient norm and throughput to the tracker (wandb)."""
    def callback(state: TrainState, stopping: bool) -> None:
        tracker.log({"train/loss": state.loss[-1], "train/lr": state.lr[-1], "train/grad_norm": state.grad_norm[-1],
                     "train/tokens_per_s": state.tokens_per_s}, step=state.step)
    return callback


def held_out_loss(every: int, total_steps: int, evaluate: Callable[[], float], tracker) -> StepCallback:
    """The held-out loss every `every` steps into `state.eval_loss` (results.json's eval_loss_curve); not at
    the last step, which the run measures after training anyway."""
    def callback(state: TrainState, stopping: bool) -> None:
        if state.step % every == 0 and state.step < total_steps:
            state.eval_loss.append([state.step, evaluate()])
            tracker.log({"eval/loss": state.eval_loss[-1][1]}, step=state.step)
    return callback


def alignment(diagnostics, every: int, model: Callable, tracker) -> StepCallback:
    """The adapters' alignment with G's singular subspaces every `every` steps (diagnostics.py); the points
    so far go into the state, so a checkpoint carries them to a resumed run's results."""
    def callback(state: TrainState, stopping: bool) -> None:
        if state.step % every == 0:
            tracker.log(diagnostics.measure(model(), state.step), step=state.step)
            state.alignment = diagnostics.points()
    return callback
