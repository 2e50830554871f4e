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


@pytest.mark.slow
def test_two_processes_dividing_the_svds_match_one_process(tmp_path):
    """Without init artifacts each layer's G is reduced onto the one process that factorises it (svd_owners), and
    its triplets are broadcast: the init adapter (LoRA-GA saves it: it moves the base) and the first steps are
    those of one process."""
    run = [setting for setting in RUN if not setting.startswith("init.save_artifacts")]
    run += ["init.save_artifacts=false", "init.direction=LoRA-GA"]
    one = run_experiment(run, tmp_path / "one")
    two = run_torchrun(run, tmp_path / "two")
    adapters = [load_file(tmp_path / r / "init" / "adapter" / "adapter_model.safetensors") for r in ("one", "two")]
    assert max_abs_difference(*adapters) < 1e-5
    assert two["eval_loss_after_init"] == pytest.approx(one["eval_loss_after_init"], rel=1e-5)
    assert two["train_loss_curve"][0] == pytest.approx(one["train_loss_curve"][0], rel=1e-5)
