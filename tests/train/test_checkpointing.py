"""Checkpoints: the loop resumes from one bit for bit across epochs; `resume` picks the newest intact one,
names a damaged one and skips it; a checkpoint continues only the same training on the same data (the
data's digest, the settings that may change), and never one a live run is still writing."""
import hashlib
import itertools
import json
import logging
import os
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from conftest import (
    TINY,
    compose_config,
    dead_pid,
    file_sha256,
    flip_a_byte,
    save_checkpoints,
    toy_trainer,
    truncate,
    write_lock,
)
from lora_one import ConfigError
from lora_one.run_lock import LOCK_FILE
from lora_one.storage import RunDirError
from lora_one.train import train
from lora_one.train.checkpointing import (
    Checkpointer,
    checkpoint_damage,
    checkpoint_to_resume,
    checkpoint_training,
    latest_checkpoint,
    training_config,
    training_data_digest,
)

RUN = TINY + ["model.max_steps=6", "checkpoint.every_n_steps=2", "wandb.mode=disabled"]


class NoisyRegression(nn.Module):
    """A model whose loss depends on the data order and on the global RNG (dropout)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x, y, attention_mask):
        return SimpleNamespace(loss=((self.linear(self.dropout(x)) - y) ** 2).mean())


def toy_training(checkpoint=None, stop_at=None, run_dir=None):
    """10 examples in batches of 3 (4 per epoch, the last short), 3 per optimizer step: every epoch
    ends with a 1-batch step. With `stop_at`, a stop is requested at that step and a checkpoint written."""
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=3)
    data = [{"x": torch.randn(3), "y": torch.randn(1), "attention_mask": torch.ones(4)} for _ in range(10)]
    shuffle = torch.Generator().manual_seed(1)
    model = NoisyRegression()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.1, total_iters=7)
    loader = DataLoader(data, batch_size=3, shuffle=True, generator=shuffle)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    torch.manual_seed(123)  # this launch's dropout stream; a resumed one gets the checkpoint's
    checkpoints = Checkpointer(run_dir, accelerator, keep=1, resume_from=checkpoint)
    checkpoints.attach(model, optimizer, scheduler, shuffle, total_steps=7)
    state = None if checkpoint is None else checkpoints.load()

    calls = itertools.count(1)  # stop_requested is asked once per step
    return train(model, optimizer, scheduler, loader, accelerator, 7, 1.0, shuffle, state, [checkpoints.after_step],
                 lambda: next(calls) == stop_at)


@pytest.mark.parametrize("stop_at", [1, 2, 5])  # mid-epoch, at an epoch's end, in the third epoch
def test_loop_resumes_exactly_across_epochs(tmp_path, stop_at):
    unbroken = toy_training()
    stopped = toy_training(stop_at=stop_at, run_dir=str(tmp_path))
    assert stopped.interrupted and stopped.step == stop_at
    resumed = toy_training(checkpoint=latest_checkpoint(str(tmp_path)))
    assert not resumed.interrupted and resumed.step == 7 and resumed.epoch == unbroken.epoch
    assert resumed.loss == unbroken.loss and resumed.lr == unbroken.lr  # bitwise: same data, dropout, updates


def test_resume_setting_picks_the_newest_complete_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    assert checkpoint_to_resume("auto", str(run_dir)) is None
    for name in ("step_2", "step_10", ".tmp-step_12"):  # a temp dir is an unfinished write
        (run_dir / "checkpoints" / name).mkdir(parents=True)
    (run_dir / "checkpoints" / "step_10" / "trainer_state.json").write_text("{}")
    assert checkpoint_to_resume("auto", str(run_dir)) == str(run_dir / "checkpoints" / "step_10")
    assert checkpoint_to_resume("never", str(run_dir)) is None
    assert checkpoint_to_resume(str(run_dir), str(tmp_path / "new")) == str(run_dir / "checkpoints" / "step_10")
    step_2 = str(run_dir / "checkpoints" / "step_2")
    with pytest.raises(ConfigError, match="neither a checkpoint nor a run directory"):
        checkpoint_to_resume(step_2, str(tmp_path / "new"))  # step_2 has no trainer_state.json
    with pytest.raises(ConfigError, match="resume='/no/such'"):
        checkpoint_to_resume("/no/such", str(tmp_path))


def test_a_checkpoint_only_continues_the_same_training(tmp_path):
    cfg = compose_config(RUN)
    (tmp_path / "trainer_state.json").write_text(json.dumps({"config": training_config(cfg)}))
    checkpoint_training(str(tmp_path)).check_config(compose_config(RUN + ["wandb.mode=offline", "checkpoint.keep=3"]))
    with pytest.raises(ConfigError, match=r"written with another 'model' config \(model.learning_rate differs\); "
                                          "resume=never starts over"):
        checkpoint_training(str(tmp_path)).check_config(compose_config(RUN + ["model.learning_rate=0.5"]))


def two_checkpoints(run_dir) -> list[str]:
    return save_checkpoints(run_dir, *toy_trainer(), steps=(2, 4))


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


def test_glue_folder_digest_is_its_train_tsv_and_loaded_data_digest_is_the_rows(tmp_path):
    folder = tmp_path / "CoLA"
    folder.mkdir()
    (folder / "train.tsv").write_text("gj04\t1\t\tThe book is red.\n")
    (folder / "dev.tsv").write_text("gj04\t0\t*\tBook red the is.\n")
    cola = compose_config(["dataset=cola", f"dataset.path={folder}"]).dataset
    assert training_data_digest(cola, []) == {"source": str(folder / "train.tsv"),
                                              "sha256": file_sha256(folder / "train.tsv")}
    (folder / "dev.tsv").write_text("gj04\t1\t\tA dev row changed.\n")  # not training data
    assert training_data_digest(cola, [])["sha256"] == file_sha256(folder / "train.tsv")

    toy = compose_config(TINY).dataset
    rows = [{"prompt": "1+1?", "response": "2"}]
    digest = training_data_digest(toy, rows)
    assert digest == {"source": "dataset 'toy_math' as loaded",
                      "sha256": hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()}
    assert training_data_digest(toy, [{"prompt": "1+1?", "response": "3"}])["sha256"] != digest["sha256"]


def test_resume_from_a_run_dir_a_live_run_holds_is_refused(tmp_path):
    source = tmp_path / "training"
    older, newest = two_checkpoints(source)
    write_lock(source, pid=os.getpid())  # alive, on this host: still training
    for resume in (str(source), older):
        with pytest.raises(RunDirError, match=rf"^run dir {source} is in use by pid {os.getpid()} on .* since .* "
                                              rf"\({source / LOCK_FILE}\): it is still writing checkpoints; resume "
                                              "from it once that run has stopped$"):
            checkpoint_to_resume(resume, str(tmp_path / "new"))
    assert checkpoint_to_resume(older, str(source)) == older  # its own run dir: this run holds the lock
    write_lock(source, pid=dead_pid())  # that run is gone: its checkpoints are final
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
