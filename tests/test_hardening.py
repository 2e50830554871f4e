"""A run never trains or reports garbage silently: non-finite steps stop it, every numeric setting and
every `++key` is checked before any work, the run dir is locked and its write failures are one line
(a full disk said as such), damaged checkpoints are named and skipped, a hub dataset that is offline
is one line, and long stages log their progress. Messages are checked through the real CLI."""
import errno
import json
import logging
import os
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from conftest import ROOT, TINY, compose_config, run_cli, run_experiment, save_checkpoints
from lora_one import ConfigError
from lora_one.train.checkpointing import checkpoint_damage, checkpoint_to_resume, latest_checkpoint
from lora_one.config import check_config_keys
from lora_one.run_lock import LOCK_FILE, RunDirLock
from lora_one.storage import RunDirError, storage_failure, write_json
from lora_one.train import train
from lora_one.train.loop import NonFiniteLoss, TrainState

QUICK = TINY[:1] + ["dataset.eval_size=4", "model.max_steps=1", "checkpoint.every_n_steps=0"]


def cli_process(args: list[str], run_dir, **env) -> subprocess.CompletedProcess:
    """`python run_exp.py ARGS hydra.run.dir=RUN_DIR`, offline, without wandb, in a process of its own: for
    settings read when a library is imported (huggingface_hub and datasets read HF_HOME and HF_HUB_OFFLINE
    then). Every other CLI test runs the same command in this interpreter (conftest.run_cli)."""
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **env}
    return subprocess.run([sys.executable, "run_exp.py", *args, f"hydra.run.dir={run_dir}"], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=600)


def assert_error(proc, pattern: str, mid_run: bool = False) -> None:
    """Exit status ≠ 0 and stderr is exactly one line, `error: …` matching `pattern` (a regex). An error
    `mid_run` follows the progress bars (tqdm) and library warnings on stderr: it is the last line, and
    no traceback."""
    import re

    assert proc.returncode != 0, proc.stdout[-2000:]
    lines = proc.stderr.strip().splitlines()
    if mid_run:
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert re.search(pattern, lines[0]), lines[0]


# --- non-finite steps --------------------------------------------------------------------------------

class Regression(nn.Module):
    """loss = mean((w·x − y)²), plus √(w − w.detach()) on a batch with `spike`: that term is 0 but its
    gradient is +inf, so the loss stays finite and the gradient does not."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def forward(self, x, y, spike, attention_mask):
        loss = (((x * self.w).sum(-1) - y) ** 2).mean()
        if spike.any():
            loss = loss + torch.sqrt(self.w - self.w.detach()).sum()
        return SimpleNamespace(loss=loss)


def toy_batches(bad_step: int, kind: str) -> list[dict]:
    """One example per step; step `bad_step` (1-based) has a NaN input (NaN loss) or the inf gradient."""
    rows = []
    for step in range(1, 6):
        x = torch.full((3,), float(step))
        if step == bad_step and kind == "nan loss":
            x[0] = float("nan")
        spike = torch.tensor(1.0 if step == bad_step and kind == "inf gradient" else 0.0)
        rows.append({"x": x, "y": torch.tensor(1.0), "spike": spike, "attention_mask": torch.ones(2)})
    return rows


@pytest.mark.parametrize("kind", ["nan loss", "inf gradient"])
@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0])  # with and without clipping
def test_a_non_finite_step_stops_before_its_update(kind, max_grad_norm):
    accelerator = Accelerator(cpu=True)
    model = Regression()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loader = DataLoader(toy_batches(3, kind), batch_size=1)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    seen = []
    with pytest.raises(NonFiniteLoss, match=r"^step 3: the training loss is (nan|\d\S*) and the gradient norm (nan|inf)"):
        train(model, optimizer, scheduler, loader, accelerator, 5, max_grad_norm, torch.Generator(), TrainState(),
              [lambda state, stopping: seen.append((state.step, model.w.detach().clone()))])
    assert [step for step, _ in seen] == [1, 2]  # the callbacks (checkpoints) never saw step 3
    assert torch.isfinite(model.w).all() and torch.equal(model.w.detach(), seen[-1][1])  # step 3 updated nothing


@pytest.mark.slow
def test_cli_stops_at_the_first_non_finite_step_and_writes_no_nan_checkpoint(tmp_path):
    """A learning rate of 1e30 makes step 1's update huge and step 2's loss non-finite."""
    proc = run_cli(QUICK + ["model.max_steps=4", "model.learning_rate=1e30", "checkpoint.every_n_steps=1"], tmp_path)
    assert_error(proc, r"^error: step 2: the training loss is (nan|inf) and the gradient norm \S+; stopped before "
                       r"updating \(no checkpoint of this step\)", mid_run=True)
    from safetensors.torch import load_file

    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step_1"]
    weights = load_file(tmp_path / "checkpoints" / "step_1" / "trainable.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (tmp_path / "results.json").exists()


def test_results_json_is_strict_json_with_null_for_non_finite(tmp_path):
    path = tmp_path / "results.json"
    write_json(str(path), {"eval_loss": float("nan"), "curve": [1.5, float("inf"), -float("inf")], "n": 3})

    def refuse(constant):
        raise AssertionError(f"bare {constant} in results.json")

    assert json.loads(path.read_text(), parse_constant=refuse) == {"eval_loss": None, "curve": [1.5, None, None], "n": 3}
    assert not (tmp_path / "results.json.tmp").exists()


# --- settings checked before any work ----------------------------------------------------------------

@pytest.mark.parametrize("override,message", [
    ("optim.max_grad_norm=-1", r"optim.max_grad_norm must be ≥ 0 \(got -1\): 0 or null turns clipping off"),
    ("peft.lora_dropout=1.0", r"peft.lora_dropout must be in \[0, 1\) \(got 1.0\)"),
    ("model.learning_rate=0", r"model.learning_rate must be > 0 \(got 0\)"),
    ("model.max_steps=ten", r"model.max_steps must be a number like its default 10 \(got 'ten'\)"),
    ("model.learning_rate=1e-3x", r"model.learning_rate must be a number like its default 0.001 \(got '1e-3x'\)"),
    ("dataset.eval_size=-8", r"dataset.eval_size must be ≥ 1 \(got -8\): the rows held out for the eval loss"),
    ("dataset.num_generated=9", r"dataset 'toy_math' from toy_math\(n=9, seed=42\): 9 rows leave no held-out row for the eval loss "
                                r"\(dataset.eval_size=4, at most a tenth of the rows is held out\)"),
    ("++init.directon=LoRA-GA", r"init.directon is not a config key \(did you mean init.direction\?\)"),
])
def test_cli_refuses_a_bad_setting_before_any_work(tmp_path, override, message):
    proc = run_cli(QUICK + [override], tmp_path)
    assert_error(proc, "^error: " + message + "$")
    assert "held-out loss" not in (tmp_path / "run_exp.log").read_text()  # no model ran: no init, no training


def test_the_in_process_cli_answers_as_a_process_of_its_own(tmp_path):
    """run_cli (this interpreter) stands for `python run_exp.py`: same exit status, same one stderr line."""
    args = QUICK + ["model.max_steps=ten"]
    alone, here = cli_process(args, tmp_path / "alone"), run_cli(args, tmp_path / "here")
    assert (alone.returncode, alone.stderr) == (here.returncode, here.stderr) == (
        1, "error: model.max_steps must be a number like its default 10 (got 'ten')\n")


@pytest.mark.parametrize("override,message", [
    ("model.max_steps=2.5", "model.max_steps must be an integer (got 2.5)"),
    ("model.learning_rate=-1e-4", "model.learning_rate must be > 0 (got -0.0001)"),
    ("peft.lora_dropout=-0.1", "peft.lora_dropout must be in [0, 1) (got -0.1)"),
    ("model.warmup=1.5", "model.warmup must be in [0, 1] (got 1.5): a fraction of the steps"),
    ("model.weight_decay=-0.1", "model.weight_decay must be ≥ 0 (got -0.1)"),
    ("optim.betas=[0.9,1.0]", "optim.betas.1 must be in [0, 1) (got 1.0)"),
    ("optim.eps=-1e-8", "optim.eps must be ≥ 0 (got -1e-08)"),
    ("peft.lora_alpha=0", "peft.lora_alpha must be > 0 (got 0)"),
    ("dataset.max_train_samples=0", "dataset.max_train_samples must be ≥ 1 (got 0): null takes all rows"),
    ("seed=1.5", "seed must be an integer (got 1.5)"),
    ("init.svd_niter=-1", "init.svd_niter must be ≥ 0 (got -1)"),
    ("init.bsz=0", "init.bsz must be ≥ 1 (got 0)"),
    ("init.iters=0", "init.iters must be ≥ 1 (got 0)"),
    ("init.oversampling=-1", "init.oversampling must be ≥ 0 (got -1)"),
    ("init=eva init.rho=0.5", "init.rho must be ≥ 1 (got 0.5)"),
    ("init=eva init.tau=0", "init.tau must be in (0, 1] (got 0)"),
    ("init=pissa init.niter=-1", "init.niter must be ≥ 0 (got -1)"),
    ("checkpoint.every_n_steps=-1", "checkpoint.every_n_steps must be ≥ 0 (got -1)"),
    ("checkpoint.keep=0", "checkpoint.keep must be ≥ 1 (got 0)"),
    ("log_every=-1", "log_every must be ≥ 0 (got -1): 0 logs no training-loss lines"),
    ("eval_loss_every=-2", "eval_loss_every must be ≥ 0 (got -2): 0 measures the held-out loss after the init and at the end only"),
    ("optim=scaled_adamw optim.prec_reg=tiny", "optim.prec_reg must be a number (got 'tiny')"),
    ("init.stable_gamma=big", "init.stable_gamma must be a number or auto (got 'big')"),
    ("optim=loraplus optim.lr_ratio=0", "optim.lr_ratio must be > 0 (got 0)"),
    ("wandb.init_timeout_s=0", "wandb.init_timeout_s must be > 0 (got 0)"),
])
def test_numeric_settings_are_checked_in_process(tmp_path, override, message):
    with pytest.raises(ConfigError) as caught:
        run_experiment(TINY + override.split(), tmp_path)
    assert str(caught.value) == message
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("overrides", [["++init.direction=LoRA-GA", "seed=3"], ["++model.learning_rate=0.01"],
                                       ["experiment=t5_glue", "dataset=cola", "++peft.lora_r=4"],
                                       ["model.max_steps=2", "dataset.max_train_samples=64"], ["optim.max_grad_norm=null"],
                                       ["init.stable_gamma=auto"]])
def test_keys_the_groups_define_pass_the_schema_check(overrides):
    check_config_keys(compose_config(overrides), overrides)


@pytest.mark.parametrize("overrides,message", [
    (["init=pissa", "++init.direction=LoRA-GA"], r"^init.direction is not a config key"),  # a key of another option
    (["+model.learnig_rate=0.1"], r"^model.learnig_rate is not a config key \(did you mean model.learning_rate\?\)$"),
    (["eval=mmlu", "eval.mmlu.shots=five"], r"^eval.mmlu.shots must be a number like its default 5 \(got 'five'\)$"),
])
def test_the_schema_check_refuses(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config_keys(compose_config(overrides), overrides)


# --- the run directory: lock, unwritable, full disk --------------------------------------------------

def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(run_dir, **owner) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "slurm_job": None, "since": time.time(),
                                                 **owner}))


def test_cli_refuses_a_run_dir_in_use(tmp_path):
    write_lock(tmp_path, pid=os.getpid())  # this test process: alive, on this host
    proc = run_cli(QUICK, tmp_path)
    assert_error(proc, rf"^error: run dir {tmp_path} is in use by pid {os.getpid()} on {socket.gethostname()} since "
                       rf"\S+ \S+ \({tmp_path / LOCK_FILE}\); use another hydra.run.dir, or delete the lock file")
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_cli_takes_over_a_stale_lock_and_releases_it(tmp_path):
    write_lock(tmp_path, pid=dead_pid())
    proc = run_cli(QUICK + ["++init.direction=LoRA-GA"], tmp_path)  # a ++ key the groups define still works
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "results.json").read_text())["config"]["init"]["direction"] == "LoRA-GA"
    assert not (tmp_path / LOCK_FILE).exists()


def test_lock_holds_pid_and_host_and_is_released_on_error(tmp_path):
    with pytest.raises(KeyError):
        with RunDirLock(str(tmp_path)):
            owner = json.loads((tmp_path / LOCK_FILE).read_text())
            assert (owner["pid"], owner["host"]) == (os.getpid(), socket.gethostname())
            with pytest.raises(RunDirError, match=f"in use by pid {os.getpid()}"):
                RunDirLock(str(tmp_path)).__enter__()  # a second holder, even in this process
            raise KeyError("the run failed")
    assert not (tmp_path / LOCK_FILE).exists()


def test_lock_of_another_host_is_refused_and_of_the_same_slurm_job_taken_over(tmp_path, monkeypatch):
    write_lock(tmp_path, pid=dead_pid(), host="some-other-node", slurm_job="77_3")
    with pytest.raises(RunDirError, match="in use by pid .* on some-other-node"):
        RunDirLock(str(tmp_path)).__enter__()
    monkeypatch.setenv("SLURM_JOB_ID", "78")  # a requeued array task: new job id, same array job and task
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    with RunDirLock(str(tmp_path)):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_cli_names_an_unwritable_run_dir(tmp_path):
    (tmp_path / "a_file").write_text("")
    proc = run_cli(QUICK, tmp_path / "a_file" / "run")
    assert_error(proc, rf"^error: cannot write {tmp_path / 'a_file' / 'run'}: not a directory \(ENOTDIR\)$")


def small_tmpfs(path, size: str) -> None:
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode:
        pytest.skip("needs root and mount (a tiny tmpfs)")


@pytest.fixture
def tiny_disk(tmp_path):
    disk = tmp_path / "disk"
    small_tmpfs(disk, "256k")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_cli_says_a_full_disk_before_hydra_writes(tiny_disk):
    filler = os.open(tiny_disk / "filler", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(OSError) as full:
        while True:
            os.write(filler, b"\0" * 4096)
    os.close(filler)
    assert full.value.errno == errno.ENOSPC
    proc = run_cli(QUICK, tiny_disk / "run")
    assert_error(proc, rf"^error: cannot write {tiny_disk / 'run'}: disk full \(ENOSPC: no space left on device\)$")


@pytest.mark.slow
def test_cli_says_a_disk_that_fills_during_the_run(tiny_disk):
    """256 KiB hold Hydra's files but not the first checkpoint (adapter + AdamW moments, ~200 KiB) next
    to a 96 KiB ballast: the checkpoint's write fails mid-run."""
    (tiny_disk / "ballast").write_bytes(b"\0" * 96 * 1024)
    proc = run_cli(QUICK + ["checkpoint.every_n_steps=1"], tiny_disk / "run")
    assert_error(proc, rf"^error: cannot write {tiny_disk / 'run' / 'checkpoints' / 'step_1'}: disk full "
                       r"\(ENOSPC: no space left on device\)$", mid_run=True)
    assert not (tiny_disk / "run" / "checkpoints" / "step_1").exists()  # no partial checkpoint


def test_storage_errors_are_named_with_the_cause(tmp_path, monkeypatch):
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "results.json"))
    assert storage_failure(full, str(tmp_path)) == f"{tmp_path / 'results.json'}: disk full (ENOSPC: no space left on device)"
    read_only = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "adapter"))
    assert storage_failure(read_only, str(tmp_path)) == f"{tmp_path / 'adapter'}: read-only file system (EROFS)"
    lost_errno = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")  # safetensors
    assert storage_failure(lost_errno, str(tmp_path)) == f"a write under {tmp_path} failed: disk full (ENOSPC: no space left on device)"
    assert storage_failure(RuntimeError("shapes do not match"), str(tmp_path)) is None  # not about the disk
    assert storage_failure(FileNotFoundError(errno.ENOENT, "No such file", "x"), str(tmp_path)) is None

    import lora_one.train.checkpointing

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lora_one.train.checkpointing, "save_file", no_space)
    with pytest.raises(RunDirError, match=rf"^cannot write {tmp_path}/checkpoints/step_1: disk full \(ENOSPC"):
        save_checkpoints(tmp_path, *toy_trainer(), steps=[1])


# --- damaged checkpoints ------------------------------------------------------------------------------

def toy_trainer():
    model = nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()  # AdamW moments in the optimizer state
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


def two_checkpoints(run_dir) -> list[str]:
    return save_checkpoints(run_dir, *toy_trainer(), steps=(2, 4))


def truncate(path) -> None:
    os.truncate(path, os.path.getsize(path) // 2)


def flip_a_byte(path) -> None:
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("name,damage,reported", [
    ("trainable.safetensors", truncate, r"trainable.safetensors is \d+ bytes, \d+ were written \(truncated\?\)"),
    ("trainer_state.json", truncate, r"trainer_state.json is \d+ bytes, \d+ were written \(truncated\?\)"),
    ("optimizer.pt", flip_a_byte, r"optimizer.pt does not match its sha256 \(damaged\)"),
    ("rng_0.pt", os.remove, r"rng_0.pt is missing"),
])
def test_a_damaged_newest_checkpoint_is_named_and_skipped(tmp_path, caplog, name, damage, reported):
    older, newest = two_checkpoints(tmp_path)
    assert checkpoint_damage(newest) is None and latest_checkpoint(str(tmp_path)) == newest
    damage(os.path.join(newest, name))
    with caplog.at_level(logging.WARNING, logger="lora_one.train.checkpointing"):
        assert checkpoint_to_resume("auto", str(tmp_path)) == older
    assert any(newest in r.getMessage() and name in r.getMessage() for r in caplog.records), caplog.text
    with pytest.raises(ConfigError, match=rf"^checkpoint {newest} is damaged: {reported}$"):
        checkpoint_to_resume(newest, str(tmp_path / "new"))  # named explicitly: no silent fallback
    truncate(os.path.join(older, "optimizer.pt"))
    with pytest.raises(ConfigError, match=rf"^no intact checkpoint in {tmp_path}/checkpoints \({newest}: {reported}\); "
                                          "resume=never starts over$"):
        checkpoint_to_resume("auto", str(tmp_path))


@pytest.mark.slow
def test_resume_falls_back_past_a_damaged_checkpoint_and_ends_like_an_unbroken_run(tmp_path):
    run = TINY + ["model.max_steps=4", "checkpoint.every_n_steps=2", "checkpoint.keep=2", "checkpoint.keep_final=true",
                  "wandb.mode=disabled"]
    unbroken = run_experiment(run, tmp_path)
    truncate(tmp_path / "checkpoints" / "step_4" / "optimizer.pt")
    resumed = run_experiment(run, tmp_path)  # resume=auto: step_4 is damaged, so from step_2
    assert resumed["resumed_from"] == str(tmp_path / "checkpoints" / "step_2")
    assert resumed["train_loss_curve"] == unbroken["train_loss_curve"] and resumed["eval_loss"] == unbroken["eval_loss"]


# --- the hub offline -----------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,message", [
    (["eval=mmlu"], r"^error: hub dataset 'cais/mmlu' \(config all, split test\) is neither cached nor reachable "
                    r"\(Couldn't reach 'cais/mmlu' on the Hub \(OfflineModeIsEnabled\), HF_HUB_OFFLINE=1\): download it "
                    r"once with network, or set eval.mmlu.data_dir to a local copy$"),
    (["dataset=gsm8k"], r"^error: hub dataset 'openai/gsm8k' \(config main, split train\) is neither cached nor reachable "
                        r"\(.*HF_HUB_OFFLINE=1\): download it once with network, or set dataset.path to a local copy$"),
])
def test_cli_names_a_hub_dataset_missing_offline(tmp_path, overrides, message):
    proc = cli_process(QUICK + overrides, tmp_path / "run", HF_HOME=str(tmp_path / "empty_hf_home"))
    assert_error(proc, message)
    assert "held-out loss" not in (tmp_path / "run" / "run_exp.log").read_text()  # before any model ran


def test_mmlu_data_dir_without_questions_is_refused_before_work(tmp_path):
    from lora_one.eval import BENCHMARKS

    with pytest.raises(ConfigError, match=rf"^eval.mmlu.data_dir '{tmp_path}' has no test/\*_test.csv$"):
        BENCHMARKS["mmlu"].check_config(compose_config(["eval=mmlu", f"eval.mmlu.data_dir={tmp_path}"]).eval.mmlu)


# --- progress in run_exp.log -------------------------------------------------------------------------

def test_long_stages_log_their_progress(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        run_experiment(TINY + ["model.max_steps=3", "log_every=2", "dataset.eval_size=12"], tmp_path)
    lines = [r.getMessage() for r in caplog.records]
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split(":")[0] for line in steps] == ["step 2/3", "step 3/3"]  # every 2nd, and the last
    assert all(" loss " in line and "lr " in line and "grad norm " in line for line in steps)
    # held-out loss before the init, after it, after training: 12 rows in batches of 4 = 3 batches
    assert lines.count("held-out loss: 3 batches per process…") == 3
    assert sum(line.startswith("held-out loss ") and "(3 batches, " in line for line in lines) == 3
    assert "starting the LoRA-One init" in lines


def test_gsm8k_from_the_hub_offline_is_one_line_naming_the_local_setting(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lora_one.eval import BENCHMARKS

    with pytest.raises(ConfigError, match=r"openai/gsm8k.*eval\.gsm8k\.path"):
        BENCHMARKS["gsm8k"].load_items(compose_config(["eval=gsm8k", "eval.gsm8k.path=null"]).eval.gsm8k)
