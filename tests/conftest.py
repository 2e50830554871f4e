"""Shared helpers: compose the real Hydra config in-process and run experiments on tiny models."""
import contextlib
import dataclasses
import io
import logging
import os
import runpy
import sys
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ["LORA_ONE_CONF"] = str(ROOT / "conf")  # this checkout's configs, even if another copy is installed

from lora_one.config import compose_config  # noqa: E402  (re-exported for the tests)

TINY = ["model=tiny_llama", "dataset.eval_size=16"]


def save_checkpoints(run_dir, model, optimizer, scheduler, steps, keep: int = 2) -> list[str]:
    """Checkpoints of a toy training at `steps` (one process), as a run writes them; their paths."""
    import torch
    from accelerate import Accelerator

    from lora_one.train.checkpointing import Checkpointer
    from lora_one.train.loop import TrainState

    checkpoints = Checkpointer(str(run_dir), Accelerator(cpu=True), keep=keep)
    checkpoints.attach(model, optimizer, scheduler, torch.Generator())
    return [checkpoints.save(TrainState(step=step)) for step in steps]


def run_experiment(overrides: list[str], out_dir) -> dict:
    """run_exp.run on the composed config, writing into `out_dir`."""
    import run_exp

    return run_exp.run(compose_config(overrides), str(out_dir))


def run_torchrun(overrides: list[str], out_dir, processes: int = 2) -> dict:
    """run_exp.py under `torchrun --nproc_per_node N` (CPU, gloo); returns its results.json."""
    import json
    import subprocess

    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["torchrun", "--standalone", "--nproc_per_node", str(processes), "run_exp.py", *overrides,
                           f"hydra.run.dir={out_dir}"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((Path(out_dir) / "results.json").read_text())


@dataclasses.dataclass
class CliRun:
    """What a `python run_exp.py …` process would have produced: exit status, stdout, stderr."""
    returncode: int
    stdout: str
    stderr: str


def run_cli(args: list[str], run_dir, **env: str) -> CliRun:
    """`python run_exp.py ARGS hydra.run.dir=RUN_DIR`, offline and without wandb, executed as `__main__` in
    this interpreter: Hydra parses the same command line and `main()` handles errors as it does in a
    process of its own, without ~10 s of imports per case. SystemExit becomes the exit status as the
    interpreter would make it (a message: printed to stderr, status 1); any other exception a traceback
    on stderr and status 1. Tests of signals, of several processes or of interpreter start-up keep a
    real subprocess."""
    environ = {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PWD": str(ROOT), **env}
    saved_env = {key: os.environ.get(key) for key in environ}
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    saved_logging = logging.root.level, logging.root.handlers[:]  # Hydra configures the root logger per run
    stdout, stderr = io.StringIO(), io.StringIO()
    os.environ.update(environ)
    os.chdir(ROOT)
    sys.argv = [str(ROOT / "run_exp.py"), *args, f"hydra.run.dir={run_dir}"]
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            runpy.run_path(str(ROOT / "run_exp.py"), run_name="__main__")
        returncode = 0
    except SystemExit as done:
        if isinstance(done.code, str):
            stderr.write(done.code + "\n")
        returncode = done.code if isinstance(done.code, int) else 0 if done.code is None else 1
    except Exception:  # noqa: BLE001 (what the interpreter would print for an uncaught error)
        stderr.write(traceback.format_exc())
        returncode = 1
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        restore_environment(saved_env)
        restore_root_logger(*saved_logging)
    return CliRun(returncode, stdout.getvalue(), stderr.getvalue())


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """A test that runs a study cell in-process sets the cell's thread count for the whole process
    (runner.limit_threads: torch and OMP_NUM_THREADS); put both back, so a later test's in-process run
    and its subprocesses compute with the threads they started with (the bits depend on it)."""
    import torch

    threads, env = torch.get_num_threads(), {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    yield
    torch.set_num_threads(threads)
    restore_environment(env)


def restore_root_logger(level: int, handlers: list[logging.Handler]) -> None:
    """Undo a Hydra run's logging setup (its handlers closed, the root's level and handlers as they were),
    so a later test's records reach pytest's capture at the levels it set, not at the run's INFO."""
    for handler in logging.root.handlers:
        if handler not in handlers:
            handler.close()
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)


def restore_environment(saved: dict[str, str | None]) -> None:
    """Put the variables back as `saved` holds them (None: it was not set)."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
