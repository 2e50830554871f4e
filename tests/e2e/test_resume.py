"""Real runs stopped and relaunched: a run stopped mid-training (SIGKILL, a preemption signal, a signal after
training) ends exactly where an unbroken run ends; a resume continues only the same training on the same
data, from an intact initial adapter and a checkpoint that cannot run code, with the alignment points
measured before it; a finished run is not silently replaced; a run that starts over moves the earlier run's
checkpoints aside. Most tests copy one small finished run (LoRA-GA, whose init moves the base, with
alignment diagnostics) and relaunch in the copy: refusals stop before training."""
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import run_exp
from conftest import ROOT, TINY, file_sha256, flip_a_byte, run_experiment, truncate
from lora_one import ConfigError
from lora_one.data.toy_math import generate_toy_math
from lora_one.eval import BENCHMARKS, EvaluationError
from lora_one.manifest import write_manifest
from lora_one.train.checkpointing import checkpoint_to_resume, latest_checkpoint

RUN = TINY + ["model.max_steps=6", "checkpoint.every_n_steps=2", "wandb.mode=disabled"]


def launch(overrides, run_dir, log) -> subprocess.Popen:
    """run_exp.py in a subprocess (its output into the file `log`)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "run_exp.py", *overrides, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_for(path, process, log, timeout=240):
    start = time.monotonic()
    while not os.path.exists(path):
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() - start < timeout, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_mid_training_then_relaunch_matches_an_unbroken_run(tmp_path):
    overrides = RUN + ["model.max_steps=40"]  # long enough that the kill lands well before the end
    unbroken = run_experiment(overrides, tmp_path / "unbroken")
    run_dir = tmp_path / "killed"
    log = tmp_path / "run.log"
    process = launch(overrides, run_dir, log)
    wait_for(run_dir / "checkpoints" / "step_2", process, log)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "results.json").exists()
    relaunched = launch(overrides, run_dir, log)
    assert relaunched.wait() == 0, log.read_text()[-3000:]
    resumed = json.loads((run_dir / "results.json").read_text())
    assert resumed["resumed_from"] and not resumed["resumed_from"].endswith("step_40")
    assert resumed["steps"] == 40 and resumed["init_layers"] == unbroken["init_layers"]
    torch.testing.assert_close(resumed["train_loss_curve"], unbroken["train_loss_curve"], rtol=1e-5, atol=1e-6)
    assert resumed["eval_loss"] == pytest.approx(unbroken["eval_loss"], abs=1e-5)
    print(f"final loss, resumed − unbroken: {resumed['train_loss_curve'][-1] - unbroken['train_loss_curve'][-1]:.3g}; "
          f"eval loss: {resumed['eval_loss'] - unbroken['eval_loss']:.3g}")


@pytest.mark.slow
def test_preemption_signal_checkpoints_then_resume_elsewhere_matches(tmp_path, monkeypatch):
    """SIGUSR1 mid-training (LoRA-GA: the init moved the base): a checkpoint at that step, exit; a run
    in a new directory with resume=<first run dir> finishes like an unbroken run."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    overrides = RUN + ["init.direction=LoRA-GA", "checkpoint.every_n_steps=0"]
    unbroken = run_experiment(overrides, tmp_path / "unbroken")
    first = tmp_path / "first"

    # The real signal, sent to this process right after step 2 (a timer would race a fast machine):
    # the handler run_exp installed catches it, and the loop stops at the next step boundary.
    real_train = run_exp.train

    def train_preempted_after_step_2(*args, **kwargs):
        bound = inspect.signature(real_train).bind(*args, **kwargs)

        def signal_after_step_2(now, stopping):
            if now.step == 2 and not stopping:
                os.kill(os.getpid(), signal.SIGUSR1)

        bound.arguments["callbacks"] = [*bound.arguments["callbacks"], signal_after_step_2]
        return real_train(*bound.args, **bound.kwargs)

    monkeypatch.setattr(run_exp, "train", train_preempted_after_step_2)
    with pytest.raises(SystemExit) as stopped:
        run_experiment(overrides, first)
    monkeypatch.setattr(run_exp, "train", real_train)
    assert stopped.value.code == 128 + signal.SIGUSR1
    checkpoint = latest_checkpoint(str(first))
    state = json.loads((first / "checkpoints" / os.path.basename(checkpoint) / "trainer_state.json").read_text())
    assert state["step"] == 3 and len(state["loss"]) == 3
    resumed = run_experiment(overrides + [f"resume={first}"], tmp_path / "second")
    assert resumed["resumed_from"] == checkpoint
    torch.testing.assert_close(resumed["train_loss_curve"], unbroken["train_loss_curve"], rtol=1e-5, atol=1e-6)
    assert resumed["eval_loss"] == pytest.approx(unbroken["eval_loss"], abs=1e-5)
    exported = load_file(tmp_path / "second" / "adapter" / "adapter_model.safetensors")
    reference = load_file(tmp_path / "unbroken" / "adapter" / "adapter_model.safetensors")
    assert all(torch.allclose(exported[k], reference[k], atol=1e-6) for k in reference)


def test_a_finished_run_removes_its_checkpoints_but_a_failed_benchmark_keeps_them_to_redo_it(tmp_path, monkeypatch):
    """A run whose benchmark fails keeps its checkpoints (the last at the final step): the relaunch trains
    nothing and evaluates again; once it has written results.json, they are removed."""
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "#### 4"}) + "\n")
    overrides = TINY + ["dataset.num_generated=200", "model.max_steps=2", "checkpoint.every_n_steps=1",
                        "wandb.mode=disabled", "eval=gsm8k", f"eval.gsm8k.path={questions}",
                        "eval.gsm8k.max_new_tokens=2"]
    def grader_down(*args, **kwargs):
        raise RuntimeError("grader down")

    with monkeypatch.context() as patch:
        patch.setattr(BENCHMARKS["gsm8k"], "evaluate", grader_down)
        with pytest.raises(EvaluationError, match="grader down"):
            run_experiment(overrides, tmp_path / "run")
    assert (tmp_path / "run" / "results.json").exists()
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["step_1", "step_2"]
    relaunched = run_experiment(overrides, tmp_path / "run")
    assert relaunched["resumed_from"] == str(tmp_path / "run" / "checkpoints" / "step_2")
    assert relaunched["eval"]["gsm8k"]["n"] == 1 and "error" not in relaunched["eval"]["gsm8k"]
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(ConfigError, match=rf"^resume='{tmp_path / 'run'}' is a finished run \(results.json written, no "
                                          r"checkpoint left\): nothing to resume$"):
        checkpoint_to_resume(str(tmp_path / "run"), str(tmp_path / "next"))
    with pytest.raises(ConfigError, match=r"^checkpoint.keep_final must be true or false \(got 'yes'\)$"):
        run_experiment(overrides + ["checkpoint.keep_final=yes"], tmp_path / "next")


@pytest.mark.slow
def test_resume_falls_back_past_a_damaged_checkpoint_and_ends_like_an_unbroken_run(tmp_path):
    run = TINY + ["model.max_steps=4", "checkpoint.every_n_steps=2", "checkpoint.keep=2", "checkpoint.keep_final=true",
                  "wandb.mode=disabled"]
    unbroken = run_experiment(run, tmp_path)
    truncate(tmp_path / "checkpoints" / "step_4" / "optimizer.pt")
    resumed = run_experiment(run, tmp_path)  # resume=auto: step_4 is damaged, so from step_2
    assert resumed["resumed_from"] == str(tmp_path / "checkpoints" / "step_2")
    assert resumed["train_loss_curve"] == unbroken["train_loss_curve"] and resumed["eval_loss"] == unbroken["eval_loss"]


def write_jsonl(path, seed: int) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in generate_toy_math(300, seed)))


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    write_jsonl(path, seed=1)
    return path


@pytest.fixture(scope="module")
def overrides(data_file) -> list[str]:
    return TINY + [f"dataset.path={data_file}", "init.direction=LoRA-GA", "peft=qv", "model.max_steps=4",
                   "checkpoint.every_n_steps=2", "checkpoint.keep_final=true", "diagnostics.alignment_every=1",
                   "wandb.mode=disabled"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, overrides):
    """(run dir, results) of the unbroken run: checkpoints step_2 and step_4, init/adapter, results.json."""
    run_dir = tmp_path_factory.mktemp("unbroken") / "run"
    return run_dir, run_experiment(overrides, run_dir)


@pytest.fixture
def copied(finished, tmp_path):
    """A copy of the finished run to relaunch in, its newest checkpoint removed (a run stopped at step 2)."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished[0], run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step_4")
    return run_dir


# --- item 4: the data a checkpoint was trained on ----------------------------------------------------

def test_the_checkpoint_and_results_record_the_data_files_sha256(finished, data_file):
    run_dir, results = finished
    expected = {"source": str(data_file), "sha256": file_sha256(data_file)}
    assert results["training_data"] == expected
    state = json.loads((run_dir / "checkpoints" / "step_4" / "trainer_state.json").read_text())
    assert state["training_data"] == expected


def test_a_resume_on_changed_data_under_the_same_path_is_refused(copied, overrides, data_file):
    original, before = data_file.read_bytes(), file_sha256(data_file)
    try:
        write_jsonl(data_file, seed=2)
        with pytest.raises(ConfigError) as refused:
            run_experiment(overrides, copied)
        now = file_sha256(data_file)
    finally:
        data_file.write_bytes(original)
    assert str(refused.value) == (f"checkpoint {copied}/checkpoints/step_2 was trained on other data ({data_file}: "
                                  f"sha256 {before[:12]}… then, {now[:12]}… now); resume=never starts over "
                                  "(or use another run dir)")


@pytest.mark.parametrize("damage,reported", [
    (flip_a_byte, r"is damaged: adapter_model.safetensors does not match its sha256 \(damaged\)"),
    (truncate, r"is damaged: adapter_model.safetensors is \d+ bytes, \d+ were written \(truncated\?\)"),
    (lambda path: shutil.rmtree(path.parent), "is missing: resuming an init that moves the base weights needs it"),
])
def test_a_damaged_or_missing_initial_adapter_refuses_the_resume(copied, overrides, damage, reported):
    adapter = copied / "init" / "adapter"
    assert json.loads((adapter / "manifest.json").read_text())["files"].keys() == {"adapter_model.safetensors"}
    damage(adapter / "adapter_model.safetensors")
    with pytest.raises(ConfigError, match=rf"^the initial adapter {adapter} {reported}; resume=never starts over$"):
        run_experiment(overrides, copied)
    assert not (copied / "checkpoints" / "step_4").exists()  # refused before training


class RunsCode:
    """Unpickling it would run `touch <marker>`: what a crafted optimizer.pt could do on a resume."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused_even_with_a_matching_manifest(copied, overrides, tmp_path):
    """A manifest proves the files are as written, not who wrote them: states are unpickled weights-only."""
    checkpoint, marker = copied / "checkpoints" / "step_2", tmp_path / "code_ran"
    torch.save({"state": {}, "param_groups": [], "payload": RunsCode(marker)}, checkpoint / "optimizer.pt")
    write_manifest(str(checkpoint))  # as whoever replaced the file would
    with pytest.raises(ConfigError, match=rf"^{checkpoint / 'optimizer.pt'} holds more than tensors and numbers "
                                          r"\(.*GLOBAL posix.system.*\): not loaded, as it could run code"):
        run_experiment(overrides, copied)
    assert not marker.exists()


# --- item 7: alignment points before the checkpoint --------------------------------------------------

def test_a_resumed_run_keeps_every_alignment_point_and_ends_like_the_unbroken_run(copied, overrides, finished):
    unbroken = finished[1]
    resumed = run_experiment(overrides, copied)
    assert resumed["resumed_from"] == str(copied / "checkpoints" / "step_2")
    assert unbroken["alignment"]["steps"] == [0, 1, 2, 3, 4]
    assert resumed["alignment"]["steps"] == [0, 1, 2, 3, 4]
    for name, curves in unbroken["alignment"]["layers"].items():
        for quantity, values in curves.items():
            assert resumed["alignment"]["layers"][name][quantity] == pytest.approx(values, rel=1e-5), (name, quantity)
    assert resumed["eval_loss"] == pytest.approx(unbroken["eval_loss"], abs=1e-5)  # the base rebuilt from init/adapter
    assert (copied / "alignment.png").exists()


# --- item 11: a run that starts over moves the earlier run's checkpoints aside -----------------------

def test_starting_over_keeps_the_new_runs_checkpoints_and_a_relaunch_continues_it(finished, tmp_path, overrides):
    run_dir = tmp_path / "run"
    shutil.copytree(finished[0], run_dir)  # an earlier run's step_2 and step_4
    new = overrides + ["model.max_steps=1", "checkpoint.every_n_steps=1", "checkpoint.keep=1"]
    run_experiment(new + ["resume=never"], run_dir)  # a finished run with checkpoints: resume=never starts over
    assert os.listdir(run_dir / "checkpoints") == ["step_1"]  # not deleted for the earlier run's newer steps
    aside = [name for name in os.listdir(run_dir) if name.startswith("checkpoints.replaced-")]
    assert len(aside) == 1 and sorted(os.listdir(run_dir / aside[0])) == ["step_2", "step_4"]
    assert latest_checkpoint(str(run_dir)) == str(run_dir / "checkpoints" / "step_1")
    assert run_experiment(new, run_dir)["resumed_from"] == str(run_dir / "checkpoints" / "step_1")


# --- item 12: a finished run without checkpoints -------------------------------------------------------

@pytest.fixture
def finished_without_checkpoints(copied):
    shutil.rmtree(copied / "checkpoints")
    return copied


def test_a_relaunch_with_another_config_does_not_replace_a_finished_run(finished_without_checkpoints, overrides):
    run_dir = finished_without_checkpoints
    results = (run_dir / "results.json").read_bytes()
    with pytest.raises(ConfigError, match=rf"^the finished run in {run_dir} was written with another 'model' config "
                                          r"\(model.learning_rate differs\); resume=never starts over \(or use another "
                                          r"run dir\)$"):
        run_experiment(overrides + ["model.learning_rate=0.01"], run_dir)
    assert (run_dir / "results.json").read_bytes() == results


def test_a_relaunch_on_other_data_does_not_replace_a_finished_run(finished_without_checkpoints, overrides, data_file):
    run_dir = finished_without_checkpoints
    original = data_file.read_bytes()
    try:
        write_jsonl(data_file, seed=3)
        with pytest.raises(ConfigError,
                           match=rf"^the finished run in {run_dir} was trained on other data \({data_file}: "):
            run_experiment(overrides, run_dir)
    finally:
        data_file.write_bytes(original)


@pytest.mark.parametrize("stage", ["final held-out pass", "benchmark"])
def test_a_signal_after_training_checkpoints_it_and_the_relaunch_only_evaluates(tmp_path, monkeypatch, stage):
    """SIGUSR1 during the final held-out pass, or during a benchmark, with no periodic checkpoints: the
    run writes a checkpoint of the finished training and exits 128 + 10; the relaunch resumes at the last
    step, trains nothing, and ends with the unbroken run's numbers."""


    overrides = TINY + ["model.max_steps=3", "checkpoint.every_n_steps=0", "wandb.mode=disabled"]
    if stage == "benchmark":
        questions = tmp_path / "questions.jsonl"
        questions.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "#### 4"}) + "\n")
        overrides += ["eval=gsm8k", f"eval.gsm8k.path={questions}", "eval.gsm8k.max_new_tokens=2"]
    unbroken = run_experiment(overrides, tmp_path / "unbroken")
    real_train, real_evaluate_loss, real_run_evaluators = run_exp.train, run_exp.evaluate_loss, run_exp.run_evaluators
    trained = []

    def train_then_mark(*args, **kwargs):
        trained.append(True)
        return real_train(*args, **kwargs)

    def signal_after_training(*args, **kwargs):
        if trained and stage == "final held-out pass":
            os.kill(os.getpid(), signal.SIGUSR1)
        return real_evaluate_loss(*args, **kwargs)

    def signal_in_benchmark(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGUSR1)  # the signal lands while the evaluators are about to run
        return real_run_evaluators(*args, **kwargs)

    monkeypatch.setattr(run_exp, "train", train_then_mark)
    monkeypatch.setattr(run_exp, "evaluate_loss", signal_after_training)
    if stage == "benchmark":
        monkeypatch.setattr(run_exp, "run_evaluators", signal_in_benchmark)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(SystemExit) as exit_:
        run_experiment(overrides, tmp_path / "broken")
    assert exit_.value.code == 128 + signal.SIGUSR1
    assert latest_checkpoint(str(tmp_path / "broken")).endswith("step_3")
    assert not (tmp_path / "broken" / "results.json").exists()
    monkeypatch.undo()
    resumed = run_experiment(overrides, tmp_path / "broken")
    assert resumed["resumed_from"].endswith("step_3") and resumed["steps"] == 3
    assert resumed["eval_loss"] == unbroken["eval_loss"] and resumed["train_loss_curve"] == unbroken["train_loss_curve"]
    def timeless(results):
        return {task: {k: v for k, v in m.items() if k != "seconds"} for task, m in results["eval"].items()}

    assert timeless(resumed) == timeless(unbroken)  # the benchmark scored in full after the relaunch
