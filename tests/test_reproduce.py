"""scripts/reproduce.py: the CPU study's plan, resume, learning-rate selection on held-out training
rows (never dev), determinism of a cell, REPRODUCTION.md from known (fake) results against values
computed by hand, the published numbers as the issue quotes them, and the paper-scale commands."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, compose_config

from lora_one import ConfigError
from lora_one.config import validate_config
from lora_one.reproduce import figures, paper, report
from lora_one.reproduce.plan import FINAL, TUNE, Cell, Method, Study, Task, cell_count, cpu_study, final_cells, \
    slug, tuning_cells
from lora_one.reproduce.published import published_cell, published_table
from lora_one.reproduce.runner import Progress, choose_learning_rates, read_results, run_cell, run_study

SPECTRAL = Method("spectral init only", ("init=gradient", "init.direction=LoRA-One", "model.max_steps=0"),
                  trains=False, gradient_init=True)


def tiny_study(data: Path, methods: tuple[Method, ...], seeds=(1, 2)) -> Study:
    """tiny_llama, 2 steps, SST-2 from ../shared/data: every stage of the real study in seconds."""
    task = Task("sst2", ("dataset=sst2", f"dataset.path={data / 'glue' / 'SST-2'}", "dataset.max_train_samples=32",
                         "dataset.eval_size=8", "model.max_length=32"),
                "glue", ("eval=glue", "eval.glue.split=dev", "eval.glue.limit=8", "eval.glue.subset_seed=0"), "dev, 8 rows")
    return Study(common=("model=tiny_llama", "model.max_steps=2", "model.per_device_batch_size=2",
                         "model.real_batch_size=2", "wandb.mode=disabled", "checkpoint.every_n_steps=0"),
                 gradient_init=("init.bsz=2", "init.iters=1"), tasks=(task,), methods=methods,
                 learning_rates=(1e-3, 1e-2), seeds=seeds, tuning_seed=0)


class CountingRun:
    """run_exp.run, counting the runs it makes."""

    def __init__(self):
        self.cells = []

    def __call__(self, cfg, out_dir):
        import run_exp

        self.cells.append(Path(out_dir).name)
        return run_exp.run(cfg, out_dir)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    data = ROOT.parent / "shared" / "data"
    if not data.exists():
        pytest.skip("../shared/data is not present")
    study = tiny_study(data, (Method("LoRA", ("init=default",)), SPECTRAL))
    root = tmp_path_factory.mktemp("study")
    runs, lines = CountingRun(), []
    run_study(study, root, runs, Progress(cell_count(study), lines.append))
    return study, root, runs, lines


# --- the plan

def test_cpu_study_plan_covers_every_task_method_rate_and_seed():
    study = cpu_study()
    assert [t.name for t in study.tasks] == ["sst2", "cola", "mrpc", "gsm8k"]
    assert [m.name for m in study.methods] == ["LoRA", "LoRA-GA", "PiSSA", "LoRA-One", "LoRA-One + scaled_adamw",
                                               "spectral init only"]
    assert len(study.learning_rates) >= 3 and len(study.seeds) >= 3
    chosen = {m.name: 5e-4 for m in study.methods}
    cells = [c for t in study.tasks for c in tuning_cells(study, t) + final_cells(study, t, chosen)]
    assert len(cells) == cell_count(study) == 4 * (5 * 3 + 6 * 3)
    assert len({c.path for c in cells}) == len(cells)  # one directory per cell
    spectral = [c for c in cells if c.method == "spectral init only"]
    assert spectral and all(c.stage == FINAL and c.learning_rate is None and "model.max_steps=0" in c.overrides
                            for c in spectral)
    for cell in (cells[0], cells[-1]):  # the real config of a tuning and a seed cell composes and validates
        validate_config(compose_config(list(cell.overrides)))


def test_method_directories_never_collide():
    assert slug("LoRA+") != slug("LoRA") and slug("LoRA-One + scaled_adamw") == "LoRA-One_plus_scaled_adamw"


# --- learning-rate selection: held-out training rows, never dev or test

def cell(method: str, rate: float) -> Cell:
    return Cell("sst2", method, TUNE, rate, 0, ())


def test_selection_takes_the_lowest_held_out_loss_and_ignores_any_dev_score():
    tuning = [(cell("LoRA", 1e-4), {"eval_loss": 0.9, "eval": {"sst2": {"accuracy": 0.99}}}),
              (cell("LoRA", 5e-4), {"eval_loss": 0.5, "eval": {"sst2": {"accuracy": 0.10}}}),
              (cell("LoRA", 2.5e-3), {"eval_loss": math.nan, "eval": {}}),  # diverged: last
              (cell("PiSSA", 1e-4), {"eval_loss": math.inf}), (cell("PiSSA", 5e-4), {"eval_loss": 2.0}),
              (cell("LoRA-GA", 1e-4), None)]  # no tuning run finished
    assert choose_learning_rates(tuning) == {"LoRA": 5e-4, "PiSSA": 5e-4, "LoRA-GA": None}


def test_tuning_cells_score_no_benchmark():
    study = cpu_study()
    for task in study.tasks:
        for tuning in tuning_cells(study, task):
            assert "eval=none" in tuning.overrides and not any(o.startswith("eval.") for o in tuning.overrides)
    assert compose_config(list(tuning_cells(study, study.tasks[0])[0].overrides)).eval == {}


def test_tuning_runs_wrote_no_dev_score_and_seed_runs_score_dev(tiny_run):
    study, root, _, _ = tiny_run
    task = study.tasks[0]
    for tuning in tuning_cells(study, task):
        assert read_results(root, tuning)["eval"] == {}
    chosen = choose_learning_rates([(c, read_results(root, c)) for c in tuning_cells(study, task)])
    for seed_cell in final_cells(study, task, chosen):
        metrics = read_results(root, seed_cell)["eval"]["glue"]
        assert metrics["split"] == "dev" and metrics["n"] == 8


# --- resume and determinism (real runs on tiny_llama)

def test_a_finished_cell_is_never_run_again(tiny_run):
    study, root, runs, lines = tiny_run
    assert len(runs.cells) == 2 + 2 * 2  # 2 tuning rates, then 2 methods × 2 seeds
    assert lines[0].startswith("[1/6] sst2 tune LoRA lr=0.001 seed=0: ") and lines[-1].startswith("[6/6] ")
    again, lines_again = CountingRun(), []
    run_study(study, root, again, Progress(cell_count(study), lines_again.append))
    assert again.cells == [] and sum(line.endswith(": done before") for line in lines_again) == 6
    # a lost result (a crash before results.json) is run again, and only it
    task = study.tasks[0]
    chosen = choose_learning_rates([(c, read_results(root, c)) for c in tuning_cells(study, task)])
    lost = final_cells(study, task, chosen)[0]
    (root / lost.path / "results.json").unlink()
    once_more = CountingRun()
    run_study(study, root, once_more, Progress(cell_count(study), lambda line: None))
    assert len(once_more.cells) == 1


def test_a_second_run_of_a_cell_gives_the_same_numbers(tiny_run, tmp_path):
    study, root, _, _ = tiny_run
    task = study.tasks[0]
    chosen = choose_learning_rates([(c, read_results(root, c)) for c in tuning_cells(study, task)])
    seed_cell = final_cells(study, task, chosen)[0]
    assert run_cell(seed_cell, tmp_path, CountingRun()).endswith(" s")
    first, second = read_results(root, seed_cell), read_results(tmp_path, seed_cell)
    for key in ("eval_loss_base", "eval_loss_after_init", "eval_loss", "eval_loss_curve", "train_loss_curve"):
        assert first[key] == second[key], key
    timing = "seconds"  # the evaluator's own wall time
    assert {k: v for k, v in first["eval"]["glue"].items() if k != timing} == \
        {k: v for k, v in second["eval"]["glue"].items() if k != timing}


def test_a_run_made_with_other_overrides_is_stale(tmp_path):
    old = Cell("sst2", "LoRA", TUNE, 1e-3, 0, ("model=tiny_llama", "model.max_steps=2"))
    new = Cell("sst2", "LoRA", TUNE, 1e-3, 0, ("model=tiny_llama", "model.max_steps=3"))
    written = []

    def fake_run(cfg, out_dir):
        written.append(cfg.model.max_steps)
        Path(out_dir, "results.json").write_text("{}")

    assert run_cell(old, tmp_path, fake_run) != "done before"
    assert run_cell(old, tmp_path, fake_run) == "done before" and read_results(tmp_path, new) is None
    run_cell(new, tmp_path, fake_run)
    assert written == [2, 3]


# --- the report, from known results

ACCURACY = {"LoRA": (0.80, 0.82, 0.84), "LoRA-One": (0.90, 0.91, 0.92), "spectral init only": (0.50, 0.50, 0.50)}
TUNING_LOSS = {("LoRA", 1e-3): 1.0, ("LoRA", 1e-2): 0.8, ("LoRA-One", 1e-3): 0.7, ("LoRA-One", 1e-2): 0.9}
STEPS = {"LoRA": 3, "LoRA-One": 3, "spectral init only": 0}
# A seed run's held-out loss at steps 2 and 3 (measured every 2 of its 3 steps, and at the last), as an
# offset from 0.5 + 0.1·seed: LoRA ends at 0.6, 0.7, 0.8; LoRA-One is at 0.5, 0.6, 0.7 at step 2.
HELD_OUT = {"LoRA": (0.5, 0.0), "LoRA-One": (-0.1, -0.2)}


def fake_results(cfg) -> dict:
    """What run_exp would write, from the cell's composed config: known numbers per method and seed."""
    method = {"default": "LoRA", "pissa": "PiSSA"}.get(cfg.init.name) or \
        ("spectral init only" if cfg.model.max_steps == 0 else "LoRA-One")
    if method == "PiSSA":
        raise RuntimeError("a cell that fails")
    tuning, after_init = not cfg.eval, 1.5 if method != "LoRA" else 2.0
    midway, final = HELD_OUT.get(method, (0.0, 0.0))
    eval_loss = TUNING_LOSS[(method, cfg.model.learning_rate)] if tuning else 0.5 + 0.1 * cfg.seed + final
    curve = [[0, after_init]] + ([[2, eval_loss - final + midway], [3, eval_loss]] if STEPS[method] else [])
    return {"config": {}, "eval_loss_base": 2.0, "eval_loss_after_init": after_init, "eval_loss": eval_loss,
            "eval_loss_curve": curve, "steps": STEPS[method], "train_time_s": 2.0 * STEPS[method],
            "eval": {} if tuning else {"glue": {"accuracy": ACCURACY[method][cfg.seed - 1], "main_metric": "accuracy"}},
            "provenance": {"git": {"commit": "0123456789abcdef", "dirty": False}, "packages": {"torch": "2.0"},
                           "python": "3.11", "cpu": "a CPU", "torch_threads": 2, "hostname": "box",
                           "start": "2026-01-01T00:00:00+00:00", "end": "2026-01-01T00:00:10+00:00"}}


@pytest.fixture(scope="module")
def fake_study(tmp_path_factory):
    study = tiny_study(Path("/nonexistent"), (Method("LoRA", ("init=default",)), Method("PiSSA", ("init=pissa",)),
                                              Method("LoRA-One", ("init=gradient", "init.direction=LoRA-One"),
                                                     gradient_init=True), SPECTRAL), seeds=(1, 2, 3))
    root = tmp_path_factory.mktemp("fake")

    def fake_run(cfg, out_dir):
        Path(out_dir, "results.json").write_text(json.dumps(fake_results(cfg)))

    lines = []
    run_study(study, root, fake_run, Progress(cell_count(study), lines.append))
    return study, root, lines


def test_failed_cells_are_reported_and_skipped(fake_study):
    _, _, lines = fake_study
    assert sum("PiSSA" in line and "FAILED" in line and "a cell that fails" in line for line in lines) == 2
    assert "sst2: chosen learning rates (lowest held-out loss at seed 0): LoRA 0.01, PiSSA –, LoRA-One 0.001" in lines


def test_table_rows_match_hand_computed_statistics(fake_study):
    study, root, _ = fake_study
    runs = report.collect(study, root)[0]
    table = report.task_table(runs)
    # LoRA: 80, 82, 84 → 82.00 ± 2.00; held-out loss 0.6, 0.7, 0.8 → 0.7000 ± 0.1000; 10 s per run
    assert "| LoRA | 0.01 | 82.00 ± 2.00 | 0.7000 ± 0.1000 | 3 | 10 s | not quoted (the paper's table is T5-base) |" in table
    assert "| LoRA-One | 0.001 | 91.00 ± 1.00 |" in table
    assert "| spectral init only | – (no step) | 50.00 ± 0.00 | 0.7000 ± 0.1000 | 0 |" in table
    assert "| PiSSA | **missing** (no tuning run finished) | **missing** (0 of 3 seeds) |" in table
    partial = report.MethodRuns("LoRA", 1e-3, True, 3, grid=(1, 3))
    assert report.rate_text(partial) == "0.001 (provisional: 1 of 3 grid points)"
    tuning = report.tuning_table(runs)
    assert "| LoRA | 1.0000 | **0.8000** |" in tuning and "| LoRA-One | **0.7000** | 0.9000 |" in tuning
    assert "| PiSSA | missing | missing |" in tuning
    assert "grid's edge, so the best rate may lie beyond it: LoRA (highest), LoRA-One (lowest)." in tuning


def test_verdicts_from_the_data(fake_study):
    study, root, _ = fake_study
    runs = report.collect(study, root)[0]
    assert report.verdict_init_alone(runs).startswith(
        "(a) init alone lowers held-out loss: **yes**: base 2.0000 → after the LoRA-One init, no step 1.5000 (-25.0 %), "
        "lower in 3 of 3 seeds.")
    # LoRA's held-out loss ends at 0.7 (mean) after 3 steps; LoRA-One's mean is 1.5, 0.6, 0.5 at steps 0, 2, 3
    assert "**2 / 3 = 0.67×** LoRA's steps" in report.verdict_speed(runs)
    assert "measured every 2 steps" in report.verdict_speed(runs)
    # 95 % t intervals (t = 4.303, n = 3): LoRA-One 91 ± 2.48, LoRA 82 ± 4.97, spectral 50 ± 0: no overlap
    assert report.confidence_interval([90, 91, 92]) == pytest.approx((91 - 4.303 / math.sqrt(3), 91 + 4.303 / math.sqrt(3)))
    assert report.verdict_ranking(runs) == (
        "(c) ranking: LoRA-One (91.00) > LoRA (82.00) > spectral init only (50.00); the best one's 95 % CI overlaps "
        "those of: none; clearly below it: LoRA, spectral init only.")


def test_verdicts_say_what_was_not_measured():
    empty = report.TaskRuns(Task("cola", (), "glue", (), "dev"), {}, [report.MethodRuns("LoRA", None, True, 3)])
    assert "**not measured**" in report.verdict_init_alone(empty)
    assert "**not measured**" in report.verdict_speed(empty) and "**not measured**" in report.verdict_ranking(empty)
    assert report.steps_to_reach([(0, 3.0), (4, 2.0)], 1.0) is None
    # results written before run_exp recorded the held-out loss curve
    no_curve = report.TaskRuns(Task("cola", (), "glue", (), "dev"), {}, [
        report.MethodRuns(name, 1e-3, True, 1, runs=[{"eval_loss": 0.8, "steps": 16}]) for name in ("LoRA", "LoRA-One")])
    assert "**not measured**" in report.verdict_speed(no_curve)
    assert not figures.plot_losses(no_curve, Path("/nonexistent/loss.png"))


# hand-made held-out loss curves ([step, loss] pairs, measured every 4 of 16 steps)
LORA_CURVES = ([[0, 2.0], [4, 1.5], [8, 1.1], [12, 0.9], [16, 0.7]],
               [[0, 2.2], [4, 1.7], [8, 1.3], [12, 1.1], [16, 0.9]])  # final 0.8, mean of the two seeds


def speed_runs(*one_curves: list) -> report.TaskRuns:
    """LoRA's two seeds above, LoRA-One's seeds the given curves, and one untrained spectral-init run."""
    def method(name: str, curves, trains: bool = True) -> report.MethodRuns:
        runs = [{"eval_loss": c[-1][1], "steps": c[-1][0], "eval_loss_curve": c} for c in curves]
        return report.MethodRuns(name, 1e-3 if trains else None, trains, len(curves), runs=runs)

    return report.TaskRuns(Task("sst2", (), "glue", (), "dev"), {}, [
        method("LoRA", LORA_CURVES), method("LoRA-One", one_curves),
        method("spectral init only", ([[0, 1.6]], [[0, 1.8]]), trains=False)])


def test_speed_verdict_on_hand_made_held_out_curves():
    # LoRA-One's mean: 1.1 at step 4, (0.78 + 0.80) / 2 = 0.79 ≤ 0.8 first at step 8
    runs = speed_runs([[0, 1.5], [4, 1.0], [8, 0.78], [12, 0.7], [16, 0.6]],
                      [[0, 1.7], [4, 1.2], [8, 0.80], [12, 0.75], [16, 0.7]])
    assert report.verdict_speed(runs) == (
        "(b) steps LoRA-One needs to reach LoRA's final held-out loss: **8 / 16 = 0.50×** LoRA's steps: LoRA's final "
        "held-out loss is 0.8000 at step 16 (mean over 2 seeds); LoRA-One (its own chosen lr, mean over seeds) is at "
        "0.7900 at step 8. The held-out loss is measured every 4 steps, so step 8 is an upper bound, within 4 steps.")
    never = speed_runs([[0, 1.5], [4, 1.2], [8, 1.0], [12, 0.9], [16, 0.85]])
    assert report.verdict_speed(never).endswith("**not reached** in 16 steps: LoRA's final held-out loss is 0.8000 at "
                                                "step 16 (mean over 2 seeds); LoRA-One (its own chosen lr, mean over "
                                                "seeds) ends at 0.8500.")
    init_alone = speed_runs([[0, 0.75], [4, 0.7], [8, 0.6], [12, 0.5], [16, 0.4]])
    assert report.verdict_speed(init_alone).endswith(
        "**0 / 16 = 0.00×** LoRA's steps: LoRA's final held-out loss is 0.8000 at step 16 (mean over 2 seeds); LoRA-One "
        "(its own chosen lr, mean over seeds) is at 0.7500 after the init alone, before any step.")


def test_mean_curve_averages_each_step_over_the_seeds_that_reached_it():
    cut_short = speed_runs([[0, 1.0], [4, 0.6], [8, 0.4]], [[0, 2.0], [4, 1.0], [8, 0.8], [12, 0.5], [16, 0.3]])
    curve = report.mean_curve(cut_short.of("LoRA-One"))
    assert [step for step, _ in curve] == [0, 4, 8, 12, 16]
    # steps 0 to 8 average both seeds; 12 and 16 are the longer seed's alone
    assert [loss for _, loss in curve] == pytest.approx([1.5, 0.8, 0.6, 0.5, 0.3])
    assert report.steps_to_reach(curve, 0.7) == 8 and report.steps_to_reach(curve, 1.5) == 0


def test_held_out_loss_figure_is_a_small_png(tmp_path):
    path = tmp_path / "sst2_loss.png"
    assert figures.plot_losses(speed_runs([[0, 1.5], [4, 1.0], [8, 0.78], [12, 0.7], [16, 0.6]]), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 150_000


def test_reproduction_markdown_and_small_figures(fake_study, tmp_path):
    study, root, _ = fake_study
    written = report.write_reproduction(study, root, tmp_path / "REPRODUCTION.md", tmp_path / "figures", "cmd")
    text = (tmp_path / "REPRODUCTION.md").read_text()
    assert "never edit by hand" in text and "- machine: a CPU, 2 torch threads, host box" in text
    assert "- code: commit 0123456789ab" in text and "- tuning runs finished: 4 of 6; seed runs finished: 9 of 12" in text
    assert "sst2 PiSSA (3 seeds)" in text
    assert "- measured on this machine: 2.0 s per optimizer step (mean over the 10 finished trained runs, tuning and seed runs)" in text
    assert "- the 5 unfinished cells need about 0.0 h more" in text  # 2 PiSSA tuning + 3 PiSSA seeds, 10 s each
    figures = [p for p in written if p.suffix == ".png"]
    assert sorted(p.name for p in figures) == ["sst2_grid.png", "sst2_loss.png", "sst2_metric.png"]
    assert all(p.stat().st_size < 150_000 for p in figures)
    assert "![sst2 loss](figures/sst2_loss.png)" in text


# --- published numbers: exactly those quoted in the issue

def test_published_numbers_are_the_quoted_ones():
    assert published_cell("gsm8k", "LoRA-One") == "57.5 / 63.8 [1]"
    assert published_cell("gsm8k", "LoRA") == "55.2 / 58.9 [1]; 42.08 [2]"
    assert published_cell("gsm8k", "LoRA-GA") == "56.5 / 60.9 [1]; 53.60 [2]"
    assert published_cell("gsm8k", "PiSSA") == "44.54 [2]"
    assert published_cell("gsm8k", "spectral init only") == "not published"
    assert published_cell("gsm8k", "LoRA-One + scaled_adamw") == "not published"
    assert published_cell("cola", "LoRA-One").startswith("not quoted")
    table = published_table()
    assert "| gsm8k | LoRA+ | 56.4 / 60.0 |" in table and "| mmlu | LoRA-One | 47.24 | MMLU 5-shot | [3] |" in table
    assert "| mmlu | base model | 45.73 |" in table and "[3] LoRA-One official repository, issue #3" in table


# --- paper scale

def expand(command: list[str]) -> list[list[str]]:
    """Every single run of a `run_exp.py -m` command (comma lists expanded), Hydra's own keys left out."""
    points = [[]]
    for arg in command[command.index("-m") + 1:]:
        if not arg.startswith("hydra"):
            key, _, values = arg.partition("=")
            points = [p + [f"{key}={v}"] for p in points for v in values.split(",")]
    return points


@pytest.mark.parametrize("table, experiment, runs_per_method", [("gsm8k", "llama2_metamath", 3), ("glue", "t5_glue", 15)])
def test_paper_commands_compose(table, experiment, runs_per_method):
    commands = paper.paper_commands(table)
    assert len(commands) == 6 and len({c[-1] for c in commands}) == 6  # one sweep dir per method
    for command in commands:
        assert command[:4] == ["python", "run_exp.py", "-m", "hydra/launcher=slurm"]
        assert f"experiment={experiment}" in command and "seed=1,2,3" in command
        points = expand(command)
        assert len(points) == runs_per_method
        validate_config(compose_config(points[0]))
    methods = [compose_config(expand(c)[0]) for c in commands]
    assert [(c.init.name, c.init.get("direction") if c.init.name == "gradient" else None, c.optim.name) for c in methods] == [
        ("default", None, "adamw"), ("default", None, "loraplus"), ("pissa", None, "adamw"),
        ("gradient", "LoRA-GA", "adamw"), ("gradient", "LoRA-One", "adamw"), ("gradient", "LoRA-One", "scaled_adamw")]
    with pytest.raises(ConfigError, match="paper table 'nope'"):
        paper.paper_commands("nope")


def test_paper_dry_run_prints_and_launches_nothing():
    done = subprocess.run([sys.executable, "scripts/reproduce.py", "paper", "--table", "gsm8k", "--dry-run",
                           "model.learning_rate=1e-4,2e-4"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 6 and all(line.startswith("python run_exp.py -m hydra/launcher=slurm experiment=llama2_metamath")
                                   and "model.learning_rate=1e-4,2e-4" in line for line in lines)
    assert not (ROOT / "multirun" / "paper" / "gsm8k").exists()
