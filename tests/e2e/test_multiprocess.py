"""Data-parallel runs (torchrun, gloo on CPU): 2 processes give the same G, init adapter and first-step
loss as 1 process with the same global batch, and only the main process writes."""
import pytest
from safetensors.torch import load_file

from conftest import TINY, run_experiment, run_torchrun

# Global batch 8 = 4 per device × 2 accumulation steps (1 process) = 4 × 1 × 2 processes;
# the init's 2 micro-batches of G split one per process.
RUN = TINY + ["model.max_steps=2", "model.per_device_batch_size=4", "model.real_batch_size=8", "init.iters=2",
              "init.save_artifacts=true", "wandb.mode=disabled"]


def max_abs_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    one = run_experiment(RUN, tmp_path / "one")
    two = run_torchrun(RUN, tmp_path / "two")
    assert one["num_processes"] == 1 and two["num_processes"] == 2

    grads = [load_file(tmp_path / run / "init" / "gradients.safetensors") for run in ("one", "two")]
    adapters = [load_file(tmp_path / run / "init" / "adapter" / "adapter_model.safetensors") for run in ("one", "two")]
    g_diff, init_diff = max_abs_difference(*grads), max_abs_difference(*adapters)
    print(f"max |ΔG| = {g_diff:.3g}, max |Δ init adapter| = {init_diff:.3g}, "
          f"Δ first-step loss = {two['train_loss_curve'][0] - one['train_loss_curve'][0]:.3g}")
    assert g_diff < 1e-6 and init_diff < 1e-5
    assert two["train_loss_curve"][0] == pytest.approx(one["train_loss_curve"][0], rel=1e-5)
    assert two["train_loss_curve"][1] == pytest.approx(one["train_loss_curve"][1], rel=1e-4)  # same update too
    log = (tmp_path / "two" / "run_exp.log").read_text()
    assert log.count("init LoRA-One:") == 1  # only the main process logs
