"""Shared helpers: compose the real Hydra config in-process and run experiments on tiny models."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path[:0] = [str(ROOT), str(ROOT / "src")]  # run_exp.py, and this checkout's package even if another is installed

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ["LORA_ONE_CONF"] = str(ROOT / "conf")  # this checkout's configs, even if another copy is installed

from lora_one.config import compose_config  # noqa: E402  (re-exported for the tests)

TINY = ["model=tiny_llama", "dataset.eval_size=16"]


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
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
