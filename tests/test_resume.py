"""Checkpoint and resume: a run stopped mid-training (SIGKILL, or a preemption signal) and relaunched
ends exactly where an unbroken run ends."""
import inspect
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

import run_exp
from conftest import ROOT, TINY, compose_config, run_experiment
from lora_one import ConfigError
from lora_one.train.checkpointing import Checkpointer, checkpoint_training, checkpoint_to_resume, latest_checkpoint, \
    training_config
from lora_one.data import encode_rows, load_splits, make_batches
from lora_one.eval import BENCHMARKS, EvaluationError
from lora_one.init import METHODS, init_method, redo_base_offset, save_initial_adapter
from lora_one.models import add_lora_adapters, load_model, load_tokenizer
from lora_one.train import train

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


def test_lora_ga_base_offset_is_redone_from_the_initial_adapter(tmp_path):
    """A resumed LoRA-GA run rebuilds W₀ − s·B₀A₀ from the saved initial adapter, bit for bit."""
    cfg = compose_config(TINY + ["init.direction=LoRA-GA", "peft=qv", "peft.lora_r=4"])
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    examples, _ = load_splits(cfg.dataset, cfg.seed)
    batches = make_batches(tokenizer, encode_rows(tokenizer, examples[:16], 128, False), cfg.init.bsz, cfg.init.iters)

    def base():
        torch.manual_seed(0)
        return load_model(cfg.model, tokenizer, cfg.cache_dir)

    method = init_method(cfg.init)
    initialised = add_lora_adapters(base(), cfg.peft, "causal", method, cfg.init)
    method.initialise(initialised, cfg.init, batches, Accelerator(cpu=True), seq2seq=False)
    save_initial_adapter(initialised, str(tmp_path / "adapter"))
    rebuilt = add_lora_adapters(base(), cfg.peft, "causal", METHODS["LoRA"], cfg.init)
    redo_base_offset(rebuilt, str(tmp_path / "adapter"))
    expected, got = initialised.state_dict(), rebuilt.state_dict()
    moved = [k for k in expected if "q_proj.base_layer.weight" in k]
    assert moved and not torch.equal(expected[moved[0]], base().state_dict()[moved[0].replace("base_model.model.", "").replace("base_layer.", "")])
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def launch(overrides, run_dir, log) -> subprocess.Popen:
    """run_exp.py in a subprocess (its output into the file `log`)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "run_exp.py", *overrides, f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


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
