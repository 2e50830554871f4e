"""accelerate_config.yaml as `accelerate launch` reads it, and the Hydra submitit launcher presets: the slurm
preset composes to valid submitit settings, and a sweep really runs through submitit's job-array path on this
machine (hydra/launcher=local)."""
import json
import subprocess
import sys

import pytest
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils.launch import prepare_multi_gpu_env

from conftest import ROOT, TINY, compose_config


def launcher_config(name: str):
    overrides = [f"hydra/launcher={name}", "hydra.launcher.gpus_per_node=4"]
    return compose_config(overrides, return_hydra_config=True).hydra.launcher


def test_slurm_preset_runs_one_task_per_gpu_with_requeue_on_timeout():
    launcher = launcher_config("slurm")
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == 4  # follows gpus_per_node
    assert launcher.signal_delay_s > 0 and launcher.max_num_timeout > 0 and launcher.array_parallelism > 0


def test_local_preset_uses_submitits_local_executor():
    launcher = launcher_config("local")
    assert launcher._target_.endswith("LocalLauncher") and launcher.tasks_per_node == 1


def test_accelerate_launch_with_the_config_starts_one_bf16_process_per_gpu():
    """What `accelerate launch --config_file accelerate_config.yaml run_exp.py …` sets up, through accelerate's
    own launcher code (without starting it): a torchrun launch of several processes on one node, on the GPUs,
    each with bf16 autocast, running run_exp.py with the overrides given."""
    command = ["--config_file", str(ROOT / "accelerate_config.yaml"), "run_exp.py", "experiment=gsm8k_smollm2"]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(command))
    environment = prepare_multi_gpu_env(args)
    assert args.multi_gpu and not args.cpu and args.num_machines == 1 and int(args.nproc_per_node) > 1
    assert environment["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert (args.training_script, args.training_script_args) == ("run_exp.py", ["experiment=gsm8k_smollm2"])


@pytest.mark.slow
def test_sweep_runs_as_a_submitit_job_array(tmp_path):
    sweep = tmp_path / "sweep"
    command = [sys.executable, "run_exp.py", "-m", "hydra/launcher=local", "++init.direction=LoRA-One,LoRA-GA",
               *TINY, "model.max_steps=2", "wandb.mode=offline", f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {path.parent.name: json.loads(path.read_text()) for path in sweep.glob("*/results.json")}
    assert sorted(results) == [f"{i}_dataset.eval_size-16_init.direction-{d}_model-tiny_llama_model.max_steps-2_"
                               "wandb.mode-offline"
                               for i, d in enumerate(["LoRA-One", "LoRA-GA"])]  # in each job's process
    for name, run in results.items():
        assert run["config"]["init"]["direction"] in name and run["steps"] == 2
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # each point was a submitit job
    assert len(list(sweep.glob("*/wandb/offline-run-*"))) == 2  # offline wandb, no network
