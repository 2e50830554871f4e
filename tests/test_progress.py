"""What a run shows on the console: the progress of its long stages, as log lines at most every
LOG_INTERVAL_S away from a terminal (tests run with stderr captured: no tty), and nothing else by
default: no library deprecation warning, no wandb banner or summary."""
import io
import logging
import re
import warnings

import tqdm.std

from conftest import TINY, compose_config, run_experiment
from lora_one.progress import LOG_INTERVAL_S, configure_console, progress
from lora_one.tracking import Tracker


class Clock:
    """tqdm's clock under test control: `now` moves by `tick` at every reading, and by hand."""

    def __init__(self, tick: float = 0.0):
        self.now, self.tick = 1000.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def use_clock(monkeypatch, clock: Clock) -> Clock:
    monkeypatch.setattr(tqdm.std, "time", clock)  # what each tqdm reads its clock from
    return clock


def progress_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "lora_one.progress"]


def test_a_long_stage_logs_a_line_at_most_every_interval_with_count_eta_and_rate(monkeypatch, caplog):
    clock = use_clock(monkeypatch, Clock())
    caplog.set_level("INFO")
    stage = progress(desc="held-out loss", total=20, unit="batch")
    for _ in range(20):  # a batch every 3 s: 60 s in all
        clock.now += 3.0
        stage.update()
    stage.close()
    lines = progress_lines(caplog)
    # the first reading 10 s after the stage began, then after the last line: t = 12, 24, 36, 48, 60 (the end,
    # which closing does not repeat)
    assert [int(re.match(r"held-out loss: (\d+)/20 batch \[", line).group(1)) for line in lines] == [4, 8, 12, 16, 20]
    # 16 batches left at 3 s each: an ETA of 48 s, 47 once tqdm has rounded
    elapsed, eta = re.search(r"(\d\d:\d\d)<(\d\d:\d\d)", lines[0]).groups()
    assert (elapsed, eta in ("00:47", "00:48"), "3.00s/batch" in lines[0]) == ("00:12", True, True), lines[0]
    assert LOG_INTERVAL_S == 10


def test_a_short_stage_and_other_processes_log_nothing(monkeypatch, caplog):
    clock = use_clock(monkeypatch, Clock())
    caplog.set_level("INFO")
    for _ in progress(range(9), desc="quick", unit="batch"):  # done within the interval
        clock.now += 1.0
    for _ in progress(range(9), desc="not the main process", unit="batch", show=False):
        clock.now += 30.0
    assert progress_lines(caplog) == []


def test_a_library_bar_drawn_meanwhile_keeps_the_first_line():
    """transformers' de-quantisation bar inside the GGUF conversion's stage: no cursor moves in a log file."""
    stage = progress(desc="converting the GGUF", total=1)
    library_bar = tqdm.std.tqdm(total=1, file=io.StringIO())
    assert library_bar.pos == 0
    library_bar.close()
    stage.close()


def test_held_out_loss_init_and_training_report_progress(monkeypatch, caplog, tmp_path):
    """A tiny run with a clock that moves 6 s per reading: every stage is long enough to report."""
    use_clock(monkeypatch, Clock(tick=6.0))
    caplog.set_level("INFO")
    run_experiment(TINY + ["model.max_steps=4"], tmp_path)
    lines = progress_lines(caplog)
    for stage, done in [("held-out loss", "4/4"), ("forward", "2/2"), ("backward", "14/14"), ("train", "4/4")]:
        assert any(stage in line and f" {done} " in line for line in lines), (stage, done, lines)  # its last count
    # no line per layer any more
    assert not [r for r in caplog.records if r.name == "lora_one.init.estimators.streaming"]


def test_a_default_run_shows_no_library_warning_and_no_progress_line(tmp_path, caplog):
    caplog.set_level("INFO")
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")  # everything a plain `python run_exp.py` would print, unless the run hides it
        run_experiment(["model=tiny_llama"], tmp_path)
    assert not [w for w in shown if issubclass(w.category, (FutureWarning, DeprecationWarning))], \
        [f"{w.category.__name__}: {w.message}" for w in shown]
    assert progress_lines(caplog) == []  # a tiny model's stages are all shorter than the interval


def test_an_offline_wandb_run_prints_no_banner_and_no_summary(tmp_path, capfd, caplog):
    caplog.set_level("INFO")
    tracker = Tracker(compose_config(TINY + ["wandb.mode=offline"]), str(tmp_path), is_main_process=True)
    tracker.log({"train/loss": 1.0}, step=1)
    tracker.finish({"eval_loss": 0.5, "steps": 1})
    printed = capfd.readouterr()
    assert "wandb" not in printed.out + printed.err
    run_dir, = (tmp_path / "wandb").glob("offline-run-*")  # tracked all the same, and said so in one line
    run_id = run_dir.name.rsplit("-", 1)[1]
    assert [line for line in caplog.messages if run_id in line and f"{tmp_path}/wandb" in line], caplog.text


def test_verbose_shows_the_libraries_deprecation_warnings_again():
    def shown_after(verbose: bool) -> list:
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            configure_console(verbose)
            warnings.warn_explicit("`x` is deprecated", FutureWarning, "modeling_utils.py", 1, module="transformers.x")
        return shown

    assert shown_after(verbose=False) == []
    assert [str(w.message) for w in shown_after(verbose=True)] == ["`x` is deprecated"]


def test_long_stages_log_their_progress(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        run_experiment(TINY + ["model.max_steps=3", "log_every=2", "dataset.eval_size=12"], tmp_path)
    lines = [r.getMessage() for r in caplog.records]
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split(":")[0] for line in steps] == ["step 2/3", "step 3/3"]  # every 2nd, and the last
    assert all(" loss " in line and "lr " in line and "grad norm " in line for line in steps)
    # held-out loss before the init, after it, after training: 12 rows in batches of 4 = 3 batches
    passes = [line for line in lines if line.startswith("held-out loss") and "3 batches" in line]
    measured = [line for line in passes if re.search(r"\d\.\d{4}", line)]  # the end of a pass: its loss
    assert (len(passes) - len(measured), len(measured)) == (3, 3), passes  # each pass said as it starts and ends
    assert [line for line in lines if line.startswith("start") and "LoRA-One init" in line], lines
