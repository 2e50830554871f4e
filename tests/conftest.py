"""Shared helpers: compose the real Hydra config in-process, run experiments on tiny models, check their errors,
build the init's references and damage files as a crash or a bad disk would."""
import contextlib
import copy
import dataclasses
import io
import json
import logging
import os
import re
import runpy
import socket
import subprocess
import sys
import time
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
QUICK = TINY[:1] + ["dataset.eval_size=4", "model.max_steps=1", "checkpoint.every_n_steps=0"]
ARCHITECTURES = ["tiny_llama", "tiny_t5"]  # a causal and an encoder-decoder model


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


def cli_process(args: list[str], run_dir, **env: str) -> subprocess.CompletedProcess:
    """`python run_exp.py ARGS hydra.run.dir=RUN_DIR`, offline, without wandb, in a process of its own: for
    settings read when a library is imported (huggingface_hub and datasets read HF_HOME and HF_HUB_OFFLINE
    then). Every other CLI test runs the same command in this interpreter (run_cli)."""
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **env}
    return subprocess.run([sys.executable, "run_exp.py", *args, f"hydra.run.dir={run_dir}"], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=600)


def assert_error(proc, pattern: str, mid_run: bool = False) -> None:
    """Exit status ≠ 0 and stderr is exactly one line, `error: …` matching `pattern` (a regex). An error
    `mid_run` follows the progress bars (tqdm) and library warnings on stderr: it is the last line, and
    no traceback."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    lines = proc.stderr.strip().splitlines()
    if mid_run:
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert re.search(pattern, lines[0]), lines[0]


def assert_one_error_line(proc, expected: str) -> None:
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [expected], proc.stderr[-2000:]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(run_dir, **owner) -> None:
    """A run-dir lock as a run writes it, on this host, held by `owner` (pid=…, and host=… or slurm_job=…)."""
    from lora_one.run_lock import LOCK_FILE

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "slurm_job": None, "since": time.time(),
                                                 **owner}))


def toy_trainer():
    """A linear model, its AdamW (one step taken: moments in its state) and a constant schedule."""
    import torch

    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()  # AdamW moments in the optimizer state
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


def truncate(path) -> None:
    os.truncate(path, os.path.getsize(path) // 2)


def flip_a_byte(path, offset: int | None = None) -> None:
    """Invert one byte of the file, the middle one unless `offset` says which."""
    offset = os.path.getsize(path) // 2 if offset is None else offset
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def file_sha256(path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def questions_file(tmp_path, answers: list[int]) -> str:
    """A GSM8K questions file of one question per answer, solved by that answer."""
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps({"question": f"{a} apples?", "answer": f"So {a}.\n#### {a}"}) + "\n"
                            for a in answers))
    return str(path)


def tiny_model(option: str = "tiny_llama"):
    """The random tiny model of `option` (seeded) in eval mode, and its tokenizer."""
    import torch

    from lora_one.models import load_model, load_tokenizer

    cfg = compose_config(TINY + [f"model={option}"])
    torch.manual_seed(0)
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    return load_model(cfg.model, tokenizer, cfg.cache_dir).eval(), tokenizer


def build(overrides):
    """Tiny Llama + adapters + the init's gradient batches, as run_exp builds them."""
    from accelerate.utils import set_seed

    from lora_one.data import encode_rows, load_splits, make_batches
    from lora_one.init import init_method
    from lora_one.models import add_lora_adapters, load_model, load_tokenizer

    cfg = compose_config(TINY + overrides)
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    train, _ = load_splits(cfg.dataset, cfg.seed)
    max_length = cfg.init.get("max_length", cfg.model.max_length)
    encoded = encode_rows(tokenizer, train, max_length, cfg.model.type == "seq2seq")
    batches = make_batches(tokenizer, encoded, cfg.init.get("bsz", 4), cfg.init.get("iters", 2))
    base = load_model(cfg.model, tokenizer, cfg.cache_dir)
    reference_base = copy.deepcopy(base)
    model = add_lora_adapters(base, cfg.peft, cfg.model.type, init_method(cfg.init), cfg.init)
    return cfg, model, reference_base, batches


def gradient_init(model, init_cfg, batches, accelerator=None):
    """Run the configured init on the wrapped model: (G per layer if kept, per-layer statistics)."""
    from accelerate import Accelerator

    from lora_one.init import init_method

    report = init_method(init_cfg).initialise(model, init_cfg, batches, accelerator or Accelerator(cpu=True), False)
    return report.gradients, report.layer_stats


def autograd_reference(base, batches, names):
    """∇_W of (1/K) Σ_k L_k by one torch.autograd.grad call on an untouched copy of the base model."""
    import torch

    weights = dict(base.named_parameters())
    loss = sum(base(**b).loss for b in batches) / len(batches)
    grads = torch.autograd.grad(loss, [weights[n] for n in names])
    return dict(zip(names, grads))


def rank_r(G, r: int):
    """[G]_r, the best rank-r approximation (Eckart-Young), in float64."""
    import torch

    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    return (U[:, :r] * S[:r]) @ Vh[:r]


def alignment(U_ref, U) -> float:
    """Mean cosine of the principal angles between the column spans of two orthonormal bases."""
    import torch

    return torch.linalg.svdvals(U_ref.double().T @ U.double()).mean().item()
