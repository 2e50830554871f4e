"""wandb glue: what a run logs (against its own results.json), seed grouping, and that wandb failures
never stop training."""
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType, SimpleNamespace

import pytest

from conftest import TINY, compose_config, run_experiment
from lora_one import ConfigError
from lora_one.tracking import Tracker, init_summary, sweep_group


class FakeRun:
    def __init__(self, fail_on_log=False):
        self.logged, self.summary, self.finished, self.fail_on_log = [], {}, False, fail_on_log

    def log(self, metrics, step):
        if self.fail_on_log:
            raise ConnectionError("wandb backend went away")
        self.logged.append((step, metrics))

    def finish(self):
        self.finished = True


def fake_wandb(monkeypatch, run=None, init_error=None):
    """A stand-in `wandb` module recording what the tracker sends."""
    module = ModuleType("wandb")
    module.__spec__ = ModuleSpec("wandb", None)  # Accelerate looks it up
    module.init_kwargs = {}

    def init(**kwargs):
        if init_error:
            raise init_error
        module.init_kwargs = kwargs
        return run

    module.init = init
    module.Settings = lambda **kw: SimpleNamespace(**kw)
    module.Table = lambda columns, data: SimpleNamespace(columns=columns, data=data)
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


@pytest.mark.slow
def test_run_logs_config_init_curves_and_final_metrics(tmp_path, monkeypatch):
    run = FakeRun()
    wandb = fake_wandb(monkeypatch, run)
    import run_exp

    group = sweep_group(["model=tiny_llama", "seed=3"])
    cfg = compose_config(TINY + ["model.max_steps=2", "wandb.mode=offline", "seed=3"])
    results = run_exp.run(cfg, str(tmp_path), group)
    assert wandb.init_kwargs["mode"] == "offline" and wandb.init_kwargs["dir"] == str(tmp_path)
    assert wandb.init_kwargs["group"] == "model=tiny_llama" and wandb.init_kwargs["name"] == "model=tiny_llama,seed=3"
    assert wandb.init_kwargs["config"]["init"]["direction"] == "LoRA-One"
    steps = {step: metrics for step, metrics in run.logged}
    table = steps[0]["init/layers"]
    assert table.columns == ["layer", "sigma1", "sigma_r_over_sigma1", "top_r_energy"]
    assert len(table.data) == len(results["init_layers"])
    assert [steps[s]["train/loss"] for s in (1, 2)] == results["train_loss_curve"]
    assert [steps[s]["train/lr"] for s in (1, 2)] == results["lr_curve"]
    assert all(steps[s]["train/tokens_per_s"] > 0 for s in (1, 2))
    sigma1 = [stats["sigma1"] for stats in results["init_layers"].values()]
    assert run.summary["init/sigma1_max"] == max(sigma1) and run.summary["init/time_s"] == results["init_time_s"]
    assert run.summary["eval_loss"] == results["eval_loss"] and run.summary["steps"] == 2
    assert run.finished


def test_wandb_failures_are_logged_and_tracking_stops(tmp_path, monkeypatch, caplog):
    cfg = compose_config(TINY + ["wandb.mode=online"])
    fake_wandb(monkeypatch, init_error=TimeoutError("no network"))
    assert Tracker(cfg, str(tmp_path), is_main_process=True).run is None
    assert "wandb init failed (TimeoutError: no network)" in caplog.text
    run = FakeRun(fail_on_log=True)
    fake_wandb(monkeypatch, run)
    tracker = Tracker(cfg, str(tmp_path), is_main_process=True)
    tracker.log({"train/loss": 1.0}, step=1)  # raises inside: swallowed
    assert tracker.run is None and "wandb log failed (ConnectionError" in caplog.text
    tracker.log({"train/loss": 0.5}, step=2)
    tracker.finish({"eval_loss": 1.0})
    assert not run.finished  # nothing more was sent after the failure


def test_only_the_main_process_tracks_and_disabled_means_no_wandb(tmp_path, monkeypatch):
    wandb = fake_wandb(monkeypatch, FakeRun())
    assert Tracker(compose_config(TINY), str(tmp_path), is_main_process=False).run is None
    assert Tracker(compose_config(TINY + ["wandb.mode=disabled"]), str(tmp_path), is_main_process=True).run is None
    assert wandb.init_kwargs == {}


def test_seeds_share_a_group():
    first = sweep_group(["++init.direction=LoRA-GA", "seed=1", "model=tiny_llama", "hydra/launcher=local",
                         "wandb.mode=offline", "checkpoint.every_n_steps=5"])
    assert first == sweep_group(["model=tiny_llama", "seed=2", "++init.direction=LoRA-GA"]) == \
        "++init.direction=LoRA-GA,model=tiny_llama"
    assert first != sweep_group(["++init.direction=LoRA-One", "seed=1", "model=tiny_llama"])


def test_init_summary_is_min_median_max_over_layers():
    stats = {"a": {"sigma1": 1.0}, "b": {"sigma1": 4.0}, "c": {"sigma1": 2.0}}
    assert init_summary(stats, 3.0, 10.0) == {"init/time_s": 3.0, "init/peak_mem_mb": 10.0, "init/sigma1_min": 1.0,
                                              "init/sigma1_median": 2.0, "init/sigma1_max": 4.0}


def test_unknown_wandb_mode_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="wandb.mode 'cloud' is unknown"):
        run_experiment(TINY + ["wandb.mode=cloud"], tmp_path)
