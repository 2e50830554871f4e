"""accelerate_config.yaml, and the Hydra submitit launcher presets: the slurm preset composes to valid submitit settings, and a
sweep really runs through submitit's job-array path on this machine (hydra/launcher=local)."""
import json
import subprocess
import sys

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from conftest import ROOT, TINY, compose_config


def launcher_config(name: str):
    return compose_config([f"hydra/launcher={name}", "hydra.launcher.gpus_per_node=4"], return_hydra_config=True).hydra.launcher


def test_slurm_preset_runs_one_task_per_gpu_with_requeue_on_timeout():
    launcher = launcher_config("slurm")
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == 4  # follows gpus_per_node
    assert launcher.signal_delay_s > 0 and launcher.max_num_timeout > 0 and launcher.array_parallelism > 0


def test_local_preset_uses_submitits_local_executor():
    launcher = launcher_config("local")
    assert launcher._target_.endswith("LocalLauncher") and launcher.tasks_per_node == 1


def test_accelerate_config_is_multi_gpu_bf16():
    config = load_config_from_file(str(ROOT / "accelerate_config.yaml"))
    assert config.distributed_type == DistributedType.MULTI_GPU and config.mixed_precision == "bf16"
    assert config.num_processes > 1 and not config.use_cpu


@pytest.mark.slow
def test_sweep_runs_as_a_submitit_job_array(tmp_path):
    sweep = tmp_path / "sweep"
    command = [sys.executable, "run_exp.py", "-m", "hydra/launcher=local", "++init.direction=LoRA-One,LoRA-GA",
               *TINY, "model.max_steps=2", "wandb.mode=offline", f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {path.parent.name: json.loads(path.read_text()) for path in sweep.glob("*/results.json")}
    assert sorted(results) == [f"{i}_dataset.eval_size-16_init.direction-{d}_model-tiny_llama_model.max_steps-2_"
                               "wandb.mode-offline" for i, d in enumerate(["LoRA-One", "LoRA-GA"])]  # in each job's process
    for name, run in results.items():
        assert run["config"]["init"]["direction"] in name and run["steps"] == 2
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # each point was a submitit job
    assert len(list(sweep.glob("*/wandb/offline-run-*"))) == 2  # offline wandb, no network
