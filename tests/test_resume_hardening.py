"""Checkpoint/resume hardening (issue #21): a resume continues only the same training on the same data,
from an intact initial adapter, with the alignment points measured before it; a finished run is not
silently replaced; a run that starts over in a run dir moves the earlier run's checkpoints aside; a run
still writing its checkpoints is not resumed from. Most tests copy one small finished run (LoRA-GA, whose
init moves the base, with alignment diagnostics) and relaunch in the copy: refusals stop before training."""
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from conftest import TINY, compose_config, run_experiment, save_checkpoints
from lora_one import ConfigError
from lora_one.train.checkpointing import checkpoint_training, checkpoint_to_resume, latest_checkpoint, \
    training_config, training_data_digest
from lora_one.data.toy_math import generate_toy_math
from lora_one.manifest import write_manifest
from lora_one.run_lock import LOCK_FILE
from lora_one.storage import RunDirError


def write_jsonl(path, seed: int) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in generate_toy_math(300, seed)))


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
    expected = {"source": str(data_file), "sha256": sha256(data_file)}
    assert results["training_data"] == expected
    state = json.loads((run_dir / "checkpoints" / "step_4" / "trainer_state.json").read_text())
    assert state["training_data"] == expected


def test_a_resume_on_changed_data_under_the_same_path_is_refused(copied, overrides, data_file):
    original, before = data_file.read_bytes(), sha256(data_file)
    try:
        write_jsonl(data_file, seed=2)
        with pytest.raises(ConfigError) as refused:
            run_experiment(overrides, copied)
        now = sha256(data_file)
    finally:
        data_file.write_bytes(original)
    assert str(refused.value) == (f"checkpoint {copied}/checkpoints/step_2 was trained on other data ({data_file}: "
                                  f"sha256 {before[:12]}… then, {now[:12]}… now); resume=never starts over "
                                  "(or use another run dir)")


def test_glue_folder_digest_is_its_train_tsv_and_loaded_data_digest_is_the_rows(tmp_path):
    folder = tmp_path / "CoLA"
    folder.mkdir()
    (folder / "train.tsv").write_text("gj04\t1\t\tThe book is red.\n")
    (folder / "dev.tsv").write_text("gj04\t0\t*\tBook red the is.\n")
    cola = compose_config(["dataset=cola", f"dataset.path={folder}"]).dataset
    assert training_data_digest(cola, []) == {"source": str(folder / "train.tsv"), "sha256": sha256(folder / "train.tsv")}
    (folder / "dev.tsv").write_text("gj04\t1\t\tA dev row changed.\n")  # not training data
    assert training_data_digest(cola, [])["sha256"] == sha256(folder / "train.tsv")

    toy = compose_config(TINY).dataset
    rows = [{"prompt": "1+1?", "response": "2"}]
    digest = training_data_digest(toy, rows)
    assert digest == {"source": "dataset 'toy_math' as loaded",
                      "sha256": hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()}
    assert training_data_digest(toy, [{"prompt": "1+1?", "response": "3"}])["sha256"] != digest["sha256"]


# --- item 5: the initial adapter (LoRA-GA rebuilds the base from it) ---------------------------------

def flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path) -> None:
    os.truncate(path, path.stat().st_size // 2)


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
        with pytest.raises(ConfigError, match=rf"^the finished run in {run_dir} was trained on other data \({data_file}: "):
            run_experiment(overrides, run_dir)
    finally:
        data_file.write_bytes(original)


# --- item 13: a run still writing its checkpoints ------------------------------------------------------

def toy_checkpoints(run_dir) -> list[str]:
    model = nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return save_checkpoints(run_dir, model, optimizer, scheduler, (2, 4))


def write_lock(run_dir, pid: int) -> None:
    (run_dir / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "slurm_job": None,
                                                 "since": time.time()}))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_resume_from_a_run_dir_a_live_run_holds_is_refused(tmp_path):
    source = tmp_path / "training"
    older, newest = toy_checkpoints(source)
    write_lock(source, os.getpid())  # alive, on this host: still training
    for resume in (str(source), older):
        with pytest.raises(RunDirError, match=rf"^run dir {source} is in use by pid {os.getpid()} on .* since .* "
                                              rf"\({source / LOCK_FILE}\): it is still writing checkpoints; resume "
                                              "from it once that run has stopped$"):
            checkpoint_to_resume(resume, str(tmp_path / "new"))
    assert checkpoint_to_resume(older, str(source)) == older  # its own run dir: this run holds the lock
    write_lock(source, dead_pid())  # that run is gone: its checkpoints are final
    assert checkpoint_to_resume(str(source), str(tmp_path / "new")) == newest


# --- what a resume compares ---------------------------------------------------------------------------

def saved_config(tmp_path, cfg) -> str:
    (tmp_path / "trainer_state.json").write_text(json.dumps({"config": training_config(cfg)}))
    return str(tmp_path)


def test_a_changed_model_is_named_not_the_settings_interpolated_from_it(tmp_path):
    checkpoint = saved_config(tmp_path, compose_config(TINY))
    with pytest.raises(ConfigError, match="another 'model' config"):  # init.max_length follows model.max_length
        checkpoint_training(checkpoint).check_config(compose_config(["dataset.eval_size=16"]))
    with pytest.raises(ConfigError, match="another 'init' config"):  # set directly
        checkpoint_training(checkpoint).check_config(compose_config(TINY + ["init.max_length=64"]))


def test_only_the_listed_logging_settings_may_change_on_resume(tmp_path):
    cfg = compose_config(TINY)
    checkpoint_training(saved_config(tmp_path, cfg)).check_config(compose_config(TINY + ["log_every=1"]))
    # a checkpoint written before log_every was listed holds it in its config
    (tmp_path / "trainer_state.json").write_text(json.dumps({"config": {**training_config(cfg), "log_every": 10}}))
    checkpoint_training(str(tmp_path)).check_config(compose_config(TINY + ["log_every=3"]))
    with pytest.raises(ConfigError, match="another 'eval_loss_every' config"):  # not listed: refused
        checkpoint_training(str(tmp_path)).check_config(compose_config(TINY + ["eval_loss_every=2"]))


@pytest.mark.parametrize("stage", ["final held-out pass", "benchmark"])
def test_a_signal_after_training_checkpoints_it_and_the_relaunch_only_evaluates(tmp_path, monkeypatch, stage):
    """SIGUSR1 during the final held-out pass, or during a benchmark, with no periodic checkpoints: the
    run writes a checkpoint of the finished training and exits 128 + 10; the relaunch resumes at the last
    step, trains nothing, and ends with the unbroken run's numbers."""
    import signal

    import run_exp

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
    timeless = lambda results: {task: {k: v for k, v in m.items() if k != "seconds"} for task, m in results["eval"].items()}
    assert timeless(resumed) == timeless(unbroken)  # the benchmark scored in full after the relaunch
