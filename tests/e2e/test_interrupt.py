"""Ctrl-C during training: a checkpoint at the next step boundary, exit 130 and one line with the command
that continues the run (`python run_exp.py resume=<run dir>`: the run's own config, in its run dir), which
ends where an unbroken run ends; a second Ctrl-C stops at once."""
import contextlib
import inspect
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

import run_exp
from conftest import ROOT, TINY, run_experiment
from lora_one.command_line import hydra_arguments, resume_command
from lora_one.train.checkpointing import Checkpointer
from lora_one.train.preemption import PreemptionSignal

# 200 generated rows (the default 2000 take seconds to tokenise); a checkpoint every 4 steps
RUN = TINY + ["dataset.num_generated=200", "model.max_steps=6", "checkpoint.every_n_steps=4", "log_every=1",
              "wandb.mode=disabled"]
QUIET = ["hydra/job_logging=none", "hydra/hydra_logging=none"]  # Hydra leaves pytest's logging alone (`disabled` would


# disable every existing logger for the rest of the session)


def run_exp_main(args: list[str]) -> tuple[int | str | None, list[str]]:
    """`python run_exp.py <args>` in-process, as its __main__ block runs it: (exit code or None, stderr lines)."""
    argv, stderr = sys.argv, io.StringIO()
    # imported, not run as __main__: Hydra would look for conf/ as a package of the module run_exp
    sys.argv = ["run_exp.py", f"--config-path={ROOT / 'conf'}", *hydra_arguments(args, rank=0)]
    try:
        with contextlib.redirect_stderr(stderr):
            run_exp.main()
        code = None
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.argv = argv
    return code, stderr.getvalue().splitlines()


@contextlib.contextmanager
def signals_after_step(step: int, signals: int, during_checkpoint: bool = False):
    """Ctrl-C (SIGINT to this process) right after training step `step`, `signals` times; with
    `during_checkpoint`, the second one while the checkpoint of the stop is being written."""
    real_train, real_save = run_exp.train, Checkpointer.save
    steps = []

    def ctrl_c_after(now, stopping):
        steps.append(now.step)
        if now.step == step:
            for _ in range(1 if during_checkpoint else signals):
                os.kill(os.getpid(), signal.SIGINT)

    def train(*args, **kwargs):
        bound = inspect.signature(real_train).bind(*args, **kwargs)
        bound.arguments["callbacks"] = [ctrl_c_after, *bound.arguments["callbacks"]]
        return real_train(*bound.args, **bound.kwargs)

    def save_after_ctrl_c(self, state):
        os.kill(os.getpid(), signal.SIGINT)
        return real_save(self, state)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_exp, "train", train)
        if during_checkpoint:
            patch.setattr(Checkpointer, "save", save_after_ctrl_c)
        yield steps


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """(run dir, exit code, stderr lines) of a run stopped by Ctrl-C after step 2: checkpointed at step 3."""
    run_dir = tmp_path_factory.mktemp("interrupted") / "run"
    with signals_after_step(2, signals=1):
        code, stderr = run_exp_main(RUN + QUIET + [f"hydra.run.dir={run_dir}"])
    return run_dir, code, stderr


@pytest.fixture
def stopped(interrupted, tmp_path):
    """A copy of the interrupted run to continue (Hydra's record in .hydra/ included)."""
    run_dir = tmp_path / "run"
    shutil.copytree(interrupted[0], run_dir)
    return run_dir


def test_ctrl_c_checkpoints_and_the_printed_command_continues_the_run_to_the_unbroken_end(interrupted, tmp_path):
    run_dir, code, stderr = interrupted
    assert code == 130 and os.listdir(run_dir / "checkpoints") == ["step_3"] and not (run_dir / "results.json").exists()
    assert not (run_dir / "run.lock").exists()
    assert not any("Traceback" in line for line in stderr)
    expected = f"stopped by SIGINT with a checkpoint; continue with: {resume_command(str(run_dir), run_exp.__file__)}"
    assert stderr[-1] == expected
    python, script, *args = shlex.split(stderr[-1].split("continue with: ")[1])
    assert python == "python" and os.path.samefile(script, ROOT / "run_exp.py") and args == [f"resume={run_dir}"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handed back

    continued = tmp_path / "continued"
    shutil.copytree(run_dir, continued)
    record = (continued / ".hydra" / "overrides.yaml").read_text()
    code, _ = run_exp_main([f"resume={continued}", *QUIET])
    resumed = json.loads((continued / "results.json").read_text())
    unbroken = run_experiment(RUN, tmp_path / "unbroken")
    assert code is None and resumed["resumed_from"] == str(continued / "checkpoints" / "step_3")
    assert resumed["steps"] == 6 and resumed["config"]["log_every"] == 1  # the run's own config
    assert resumed["train_loss_curve"] == unbroken["train_loss_curve"] and resumed["eval_loss"] == unbroken["eval_loss"]
    assert (continued / ".hydra" / "overrides.yaml").read_text() == record  # the run's record is left as it was
    # finished: their checkpoints (step_4, step_6) are removed
    assert not (continued / "checkpoints").exists() and not (tmp_path / "unbroken" / "checkpoints").exists()


def test_a_resume_of_a_run_dir_refuses_an_override_that_changes_its_training(stopped):
    code, _ = run_exp_main([f"resume={stopped}", "model.learning_rate=0.5", *QUIET])
    assert code == (f"error: checkpoint {stopped}/checkpoints/step_3 was written with another 'model' config "
                    f"(model.learning_rate differs); resume={stopped} continues that training as it was: leave out "
                    "the settings that change it")
    assert os.listdir(stopped / "checkpoints") == ["step_3"] and not (stopped / "results.json").exists()


@pytest.mark.parametrize("during_checkpoint", [False, True])
def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(tmp_path, during_checkpoint):
    """Twice in a row after step 1, or once after step 1 and again while its checkpoint is being written."""
    run_dir = tmp_path / "run"
    handlers = {sig: signal.getsignal(sig) for sig in PreemptionSignal.SIGNALS}
    with signals_after_step(1, signals=2, during_checkpoint=during_checkpoint) as steps:
        code, stderr = run_exp_main(RUN + QUIET + [f"hydra.run.dir={run_dir}"])
    assert code == 130 and steps == ([1, 2] if during_checkpoint else [1])  # a checkpoint: at the step after
    assert stderr[-1] == "interrupted at once, before any checkpoint: nothing to continue"
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "results.json").exists()
    assert not (run_dir / "run.lock").exists() and not any("Traceback" in line for line in stderr)
    assert {sig: signal.getsignal(sig) for sig in PreemptionSignal.SIGNALS} == handlers  # none of the run's left


# --- the real thing: Ctrl-C on the command line, then the printed command ---------------------------------

@pytest.mark.slow
def test_ctrl_c_on_the_command_line_then_the_printed_command_ends_like_an_unbroken_run(tmp_path):
    overrides = RUN + ["model.max_steps=60", "checkpoint.every_n_steps=0"]  # a Ctrl-C lands well before the end
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    run_dir, log, errors = tmp_path / "run", tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(log, "w") as out, open(errors, "w") as err:
        process = subprocess.Popen([sys.executable, "run_exp.py", *overrides, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                                   env=env, stdout=out, stderr=err,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's
    start = time.monotonic()
    while "step 2/60" not in log.read_text():  # the log line of step 2 (log_every=1)
        assert process.poll() is None and time.monotonic() - start < 240, errors.read_text()[-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=240)
    stderr = errors.read_text()
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr + log.read_text()
    command = stderr.strip().splitlines()[-1].split("stopped by SIGINT with a checkpoint; continue with: ")[1]
    checkpoint = os.listdir(run_dir / "checkpoints")
    assert len(checkpoint) == 1 and 2 <= int(checkpoint[0].removeprefix("step_")) < 60

    continued = subprocess.run(shlex.split(command), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert continued.returncode == 0, continued.stderr[-3000:]
    resumed = json.loads((run_dir / "results.json").read_text())
    unbroken = run_experiment(overrides, tmp_path / "unbroken")
    assert resumed["resumed_from"] == str(run_dir / "checkpoints" / checkpoint[0]) and resumed["steps"] == 60
    assert resumed["eval_loss"] == pytest.approx(unbroken["eval_loss"], abs=1e-5)
