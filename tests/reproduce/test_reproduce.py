"""scripts/reproduce.py: the CPU study's plan (grids that extend past an edge, selection over tuning
seeds on held-out training rows, never dev), records that resume a study and regenerate its report,
determinism of a cell both in this process and in a worker, REPRODUCTION.md from known (fake) records
against statistics computed by hand, the published numbers as the issue quotes them, and the
paper-scale commands."""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, compose_config
from lora_one import ConfigError
from lora_one.config import validate_config
from lora_one.reproduce import figures, paper, report, stats, verify
from lora_one.reproduce.plan import (
    FINAL,
    TUNE,
    Cell,
    Method,
    Study,
    Task,
    cell_count,
    cpu_study,
    extended_grid,
    final_cells,
    slug,
    tuning_cells,
)
from lora_one.reproduce.published import published_cell, published_table
from lora_one.reproduce.records import CodeState, code_state, dumps, read_record
from lora_one.reproduce.runner import (
    Progress,
    Store,
    choose_learning_rates,
    run_in_pool,
    run_study,
    tuning_plan,
    worker_pool,
)

SPECTRAL = Method("spectral init only", ("init=gradient", "init.direction=LoRA-One", "model.max_steps=0"),
                  trains=False, gradient_init=True)
CODE = CodeState("feedfacecafebeef", "0123456789abcdef0123", False)


def tiny_study(data: Path, methods: tuple[Method, ...], seeds=(1, 2), tuning_seeds=(0,)) -> Study:
    """tiny_llama, 2 steps, SST-2 from ../shared/data: every stage of the real study in seconds."""
    task = Task("sst2", ("dataset=sst2", f"dataset.path={data / 'glue' / 'SST-2'}", "dataset.max_train_samples=32",
                         "dataset.eval_size=8", "model.max_length=32"),
                "glue", ("eval=glue", "eval.glue.split=dev", "eval.glue.limit=8", "eval.glue.subset_seed=0"),
                "dev, 8 rows")
    return Study(common=("model=tiny_llama", "model.max_steps=2", "model.per_device_batch_size=2",
                         "model.real_batch_size=2", "wandb.mode=disabled", "checkpoint.every_n_steps=0"),
                 gradient_init=("init.bsz=2", "init.iters=1"), tasks=(task,), methods=methods,
                 learning_rates=(1e-3, 1e-2), seeds=seeds, tuning_seeds=tuning_seeds, curve_every=1)


class CountingRun:
    """run_exp.run, counting the runs it makes."""

    def __init__(self):
        self.cells = []

    def __call__(self, cfg, out_dir):
        import run_exp

        self.cells.append(Path(out_dir).name)
        return run_exp.run(cfg, out_dir)


def data_dir() -> Path:
    data = ROOT.parent / "shared" / "data"
    if not data.exists():
        pytest.skip("../shared/data is not present")
    return data


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    study = tiny_study(data_dir(), (Method("LoRA", ("init=default",)), SPECTRAL))
    root = tmp_path_factory.mktemp("study")
    store = Store(root / "runs", root / "cells", CODE)
    runs, lines = CountingRun(), []
    run_study(study, store, runs, Progress(cell_count(study), lines.append))
    return study, store, runs, lines


# --- the plan

def test_cpu_study_plan_covers_every_task_method_rate_and_seed():
    study = cpu_study()
    assert len(study.seeds) >= 5 and len(study.tuning_seeds) >= 2 and study.grid_extensions >= 1 and study.threads == 1
    names = [m.name for m in study.methods]
    assert {"LoRA", "LoRA-GA", "PiSSA", "LoRA-One", "LoRA-One + scaled_adamw", "Full FT", "spectral init only",
            "base model"} <= set(names)
    chosen = {m.name: study.first_grid(m)[0] for m in study.methods}
    cells = [c for t in study.tasks for c in tuning_cells(study, t) + final_cells(study, t, chosen)]
    assert len(cells) == cell_count(study)
    assert len({c.path for c in cells}) == len(cells)  # one directory per cell
    spectral = [c for c in cells if c.method == "spectral init only"]
    assert spectral and all(c.stage == FINAL and c.learning_rate is None and "model.max_steps=0" in c.overrides
                            for c in spectral)
    for cell in (cells[0], cells[-1]):  # the real config of a tuning and a seed cell composes and validates
        validate_config(compose_config(list(cell.overrides)))


def test_method_directories_never_collide():
    assert slug("LoRA+") != slug("LoRA") and slug("LoRA-One + scaled_adamw") == "LoRA-One_plus_scaled_adamw"


# --- learning-rate selection: held-out training rows, mean over tuning seeds, never dev or test

def test_an_edge_rate_extends_the_grid_by_its_own_step():
    assert extended_grid((1e-3, 4e-3, 1.6e-2), 1.6e-2, 1) == (1e-3, 4e-3, 1.6e-2, 6.4e-2)
    assert extended_grid((1e-3, 4e-3, 1.6e-2), 1e-3, 1) == (2.5e-4, 1e-3, 4e-3, 1.6e-2)
    assert extended_grid((1e-3, 4e-3, 1.6e-2), 4e-3, 1) == (1e-3, 4e-3, 1.6e-2)  # interior
    assert extended_grid((1e-3, 4e-3, 1.6e-2), 1.6e-2, 0) == (1e-3, 4e-3, 1.6e-2)  # no extension left


def grid_study(extensions: int) -> Study:
    return Study(common=(), gradient_init=(), tasks=(Task("sst2", (), "glue", (), "dev"),),
                 methods=(Method("LoRA", ("init=default",)),
                          Method("PiSSA", ("init=pissa",), learning_rates=(1e-4, 1e-3))),
                 learning_rates=(1e-3, 1e-2), seeds=(1,), tuning_seeds=(0, 1), grid_extensions=extensions)


def loss_records(losses: dict) -> callable:
    """A cell → a record with the held-out loss `losses[(method, rate, seed)]` (absent: not finished),
    and a dev score that must never matter."""
    def record_of(cell: Cell):
        loss = losses.get((cell.method, cell.learning_rate, cell.seed))
        return None if loss is None else {"eval_loss": loss, "eval": {"glue": {"accuracy": 1 / (1 + loss)}}}
    return record_of


def test_selection_is_the_lowest_mean_held_out_loss_over_the_tuning_seeds_and_extends_past_an_edge():
    study = grid_study(extensions=2)
    task = study.tasks[0]
    # LoRA: means 0.9 (1e-3), 0.5 (1e-2): the top edge adds 1e-1 (mean 0.7): 1e-2 is interior, chosen.
    # PiSSA: seed means 0.4 (1e-4; its own grid), nan at 1e-3 ranks last: the bottom edge adds 1e-5 (0.6): 1e-4.
    losses = {("LoRA", 1e-3, 0): 1.0, ("LoRA", 1e-3, 1): 0.8, ("LoRA", 1e-2, 0): 0.4, ("LoRA", 1e-2, 1): 0.6,
              ("PiSSA", 1e-4, 0): 0.3, ("PiSSA", 1e-4, 1): 0.5, ("PiSSA", 1e-3, 0): math.nan, ("PiSSA", 1e-3, 1): 0.1}
    grids, pending = tuning_plan(study, task, loss_records(losses))
    assert grids == {"LoRA": (1e-3, 1e-2, 0.1), "PiSSA": (1e-5, 1e-4, 1e-3)}
    assert sorted((c.method, c.learning_rate, c.seed) for c in pending) == [
        ("LoRA", 0.1, 0), ("LoRA", 0.1, 1), ("PiSSA", 1e-5, 0), ("PiSSA", 1e-5, 1)]
    assert choose_learning_rates(study, task, loss_records(losses), grids) == {"LoRA": None, "PiSSA": None}
    losses.update({("LoRA", 0.1, 0): 0.7, ("LoRA", 0.1, 1): 0.7, ("PiSSA", 1e-5, 0): 0.6, ("PiSSA", 1e-5, 1): 0.6})
    grids, pending = tuning_plan(study, task, loss_records(losses))
    assert pending == [] and grids == {"LoRA": (1e-3, 1e-2, 0.1), "PiSSA": (1e-5, 1e-4, 1e-3)}
    assert choose_learning_rates(study, task, loss_records(losses), grids) == {"LoRA": 1e-2, "PiSSA": 1e-4}


def test_a_grid_stops_extending_after_its_budget():
    study = grid_study(extensions=1)
    # LoRA keeps improving towards larger rates: one extension (1e-1), then it stays at the edge
    losses = {("LoRA", r, s): 1 / r for r in (1e-3, 1e-2, 0.1) for s in (0, 1)}
    losses.update({("PiSSA", r, s): r for r in (1e-4, 1e-3) for s in (0, 1)}
                  | {("PiSSA", 1e-5, s): 1.0 for s in (0, 1)})
    grids, pending = tuning_plan(study, study.tasks[0], loss_records(losses))
    assert pending == [] and grids["LoRA"] == (1e-3, 1e-2, 0.1)
    assert choose_learning_rates(study, study.tasks[0], loss_records(losses), grids)["LoRA"] == 0.1


def test_tuning_cells_score_no_benchmark():
    study = cpu_study()
    for task in study.tasks:
        for tuning in tuning_cells(study, task):
            assert "eval=none" in tuning.overrides and not any(o.startswith("eval.") for o in tuning.overrides)
    assert compose_config(list(tuning_cells(study, study.tasks[0])[0].overrides)).eval == {}


def test_tuning_runs_wrote_no_dev_score_and_seed_runs_score_dev(tiny_run):
    study, store, _, _ = tiny_run
    task = study.tasks[0]
    grids, pending = tuning_plan(study, task, store.record)
    assert pending == []
    for tuning in tuning_cells(study, task, grids):
        assert store.record(tuning)["eval"] == {}
    for seed_cell in final_cells(study, task, choose_learning_rates(study, task, store.record, grids)):
        metrics = store.record(seed_cell)["eval"]["glue"]
        assert metrics["split"] == "dev" and metrics["n"] == 8 and sum(metrics["gold_counts"].values()) == 8


# --- records: resume, code state, determinism (real runs on tiny_llama)

def test_a_finished_cell_is_never_run_again(tiny_run):
    study, store, runs, lines = tiny_run
    tuning = len(runs.cells) - 2 * 2  # 2 methods × 2 seeds, after the grid (extended while LoRA chose an edge)
    # the untrained method's seeds first (no rate to choose), then the tuning runs
    assert tuning >= 2 and all("spectral init only" in line for line in lines[:2])
    assert lines[2].startswith("[3/") and "sst2 tune LoRA lr=0.001 seed=0: " in lines[2]
    again, lines_again = CountingRun(), []
    run_study(study, store, again, Progress(cell_count(study), lines_again.append))
    assert again.cells == [] and sum(line.endswith(": done before") for line in lines_again) == len(runs.cells)
    # a lost record (a crash before it was written) is run again, and only it; another code state's too
    grids, _ = tuning_plan(study, study.tasks[0], store.record)
    lost = final_cells(study, study.tasks[0], choose_learning_rates(study, study.tasks[0], store.record, grids))[0]
    (store.records / f"{lost.path}.json").unlink()
    once_more = CountingRun()
    run_study(study, store, once_more, Progress(cell_count(study), lambda line: None))
    assert len(once_more.cells) == 1
    assert read_record(store.records, lost, CODE.digest) is not None
    assert read_record(store.records, lost, "other") is None


@pytest.mark.parametrize("damage", ["<<<<<<< HEAD\n", '{"overrides": []}', "[]"])
def test_a_damaged_record_is_named_in_one_line(tmp_path, damage):
    """A committed record is read back, so it is checked like data: a merge conflict, a record without its
    fields, or JSON of another shape is refused naming the file, never a traceback or a silent re-run."""
    cell = Cell("sst2", "LoRA", FINAL, 1e-3, 1, ("init=default",))
    path = tmp_path / f"{cell.path}.json"
    path.parent.mkdir(parents=True)
    path.write_text(damage)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))} is not a study record \((JSONDecodeError|KeyError"
                                          r"|TypeError): .*\); restore the committed one with `git checkout -- "):
        read_record(tmp_path, cell, CODE.digest)


def test_records_hold_what_the_report_needs_and_no_weights(tiny_run):
    study, store, _, _ = tiny_run
    files = sorted(store.records.rglob("*.json"))
    assert files and all(f.stat().st_size < 20_000 for f in files)
    record = json.loads(files[-1].read_text())
    assert record["code"] == CODE.as_dict() and record["overrides"][-1].startswith("seed=")
    assert {"eval_loss", "eval_loss_curve", "train_loss_curve", "config_digest", "provenance", "eval"} <= set(record)
    assert "config" not in record and dumps(record) == files[-1].read_text()  # stable bytes


def test_a_cell_re_run_in_this_process_and_in_a_worker_is_identical_in_every_number(tiny_run, tmp_path):
    """The study's two paths (one process; spawned workers) and verify's re-run compute the same bits."""
    study, store, _, _ = tiny_run
    grids, _ = tuning_plan(study, study.tasks[0], store.record)
    seed_cell = final_cells(study, study.tasks[0], choose_learning_rates(study, study.tasks[0], store.record, grids))[0]
    lines = []
    assert verify.compare(seed_cell, store.record(seed_cell), study, tmp_path / "here", CountingRun(), lines.append), \
        "\n".join(line for line in lines if "identical" not in line)
    assert lines[-1].startswith(f"{seed_cell.name}: identical in every number")
    assert any(line.startswith("  eval.glue.accuracy: ") for line in lines)
    import run_exp

    workers = Store(tmp_path / "runs", tmp_path / "cells", CODE)
    with worker_pool(1) as pool:
        assert run_in_pool(pool, [seed_cell], study, workers, run_exp.run, Progress(1, lambda line: None)) == []
    pooled = verify.numbers(workers.record(seed_cell))
    assert pooled == verify.numbers(store.record(seed_cell)) and len(pooled) > 20


def test_code_state_follows_what_a_cell_computes(tmp_path):
    repo = tmp_path / "repo"
    for path, text in (("run_exp.py", "a"), ("conf/config.yaml", "b"), ("src/lora_one/x.py", "c"),
                       ("src/lora_one/reproduce/report.py", "d"), ("README.md", "e")):
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    clean = code_state(repo)
    assert not clean.dirty and len(clean.commit) == 40
    (repo / "README.md").write_text("changed")
    (repo / "src/lora_one/reproduce/report.py").write_text("changed")
    assert code_state(repo).digest == clean.digest and not code_state(repo).dirty  # the report computes no number
    (repo / "src/lora_one/x.py").write_text("changed")
    assert code_state(repo).digest != clean.digest and code_state(repo).dirty


def test_each_record_is_committed_alone_as_it_is_kept(tmp_path):
    repo = tmp_path / "repo"
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "work.py").write_text("staged, not the study's")
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "start"], check=True)
    subprocess.run([*git, "add", "src/work.py"], check=True)
    store = Store(tmp_path / "runs", repo / "docs" / "cells", CODE, repo)
    cell = Cell("sst2", "LoRA", TUNE, 1e-3, 11, ("seed=11",))
    store.keep(cell, {"eval_loss": 0.5, "eval": {}})
    log = subprocess.run([*git, "log", "--name-only", "--format=%s", "-1"], capture_output=True,
                         text=True).stdout.split()
    assert " ".join(log[:6]) == "study: sst2 tune LoRA lr=0.001 seed=11" and log[6] == f"docs/cells/{cell.path}.json"
    assert "src/work.py" not in log and store.record(cell)["eval_loss"] == 0.5
    staged = subprocess.run([*git, "diff", "--cached", "--name-only"], capture_output=True, text=True).stdout.split()
    assert staged == ["src/work.py"]  # what was staged before stays staged, uncommitted


def test_verify_names_each_difference():
    assert verify.verdict(0.5, 0.5) == "identical"
    assert verify.verdict(0.5, 0.25) == "differs by 0.25 (0.5 vs 0.25)"
    assert verify.numbers({"eval": {"glue": {"f1": 0.5, "split": "dev"}}, "eval_loss_curve": [[0, 1.0]],
                           "provenance": {"start": 1}}) == \
        {"eval.glue.f1": 0.5, "eval_loss_curve[0][0]": 0, "eval_loss_curve[0][1]": 1.0}


# --- the report, from known records

ACCURACY = {"LoRA": (80, 82, 84), "LoRA-One": (90, 91, 92), "spectral init only": (50, 50, 50)}
HELD_OUT_FINAL = {"LoRA": (0.6, 0.7, 0.8), "LoRA-One": (0.5, 0.55, 0.75), "spectral init only": (1.5, 1.5, 1.5)}
# 10 dev rows, 6 `negative`: the majority class scores 60 %; LoRA's seed 1 predicts `negative` for all 10
GOLD = {"negative": 6, "positive": 4}


def fake_record(cell: Cell) -> dict | None:
    """A finished cell's record with known numbers; PiSSA never finished."""
    if cell.method == "PiSSA":
        return None
    if cell.stage == TUNE:
        loss = {("LoRA", 1e-3): 1.0, ("LoRA", 1e-2): 0.8, ("LoRA-One", 1e-3): 0.7, ("LoRA-One", 1e-2): 0.9}
        return {"eval_loss": loss[(cell.method, cell.learning_rate)], "steps": 4, "train_time_s": 4.0, "eval": {},
                "provenance": PROVENANCE, "code": CODE.as_dict()}
    i = cell.seed - 1
    final = HELD_OUT_FINAL[cell.method][i]
    # curves every 2 of 4 steps: LoRA 2.0, 1.0, final; LoRA-One 1.5, final + 0.05 (mean 0.65 ≤ LoRA's 0.7 at
    # step 2), final
    curve = [[0, 1.5]] if cell.method == "spectral init only" else \
        [[0, 2.0], [2, 1.0], [4, final]] if cell.method == "LoRA" else [[0, 1.5], [2, final + 0.05], [4, final]]
    one_class = (cell.method, cell.seed) == ("LoRA", 1)
    predicted = {"negative": 10, "positive": 0} if one_class else {"negative": 5, "positive": 5}
    return {"eval_loss": final, "eval_loss_base": 2.0, "eval_loss_after_init": curve[0][1], "eval_loss_curve": curve,
            "steps": curve[-1][0], "train_time_s": 2.0 * curve[-1][0], "code": CODE.as_dict(), "provenance": PROVENANCE,
            "eval": {"glue": {"accuracy": ACCURACY[cell.method][i] / 100, "main_metric": "accuracy",
                              "predicted_counts": predicted, "gold_counts": GOLD}}}


PROVENANCE = {"packages": {"torch": "2.0"}, "python": "3.11", "cpu": "a CPU", "torch_threads": 1,
              "start": "2026-01-01T00:00:00+00:00", "end": "2026-01-01T00:00:10+00:00"}


@pytest.fixture(scope="module")
def fake_runs():
    study = tiny_study(Path("/nonexistent"), (Method("LoRA", ("init=default",)), Method("PiSSA", ("init=pissa",)),
                                              Method("LoRA-One", ("init=gradient", "init.direction=LoRA-One"),
                                                     gradient_init=True), SPECTRAL), seeds=(1, 2, 3))
    return study, report.collect(study, fake_record, lambda task: ["negative", "positive"])[0]


def test_table_rows_match_hand_computed_statistics(fake_runs):
    _, runs = fake_runs
    table = report.task_table(runs)
    assert "| majority class (always `negative`, no run) | – | 60.00 |" in table
    # LoRA: 80, 82, 84 → 82.00 ± 2.00; held-out 0.6, 0.7, 0.8 → 0.7000 ± 0.1000; seed 1 predicts one class
    assert ("| LoRA | 0.01 (grid edge) | 82.00 ± 2.00 (n=3) | – | 0.7000 ± 0.1000 | – | 1 of 3 | 4 | 10 s | "
            "not quoted (the paper's table is T5-base) |") in table
    # LoRA-One − LoRA per seed: 10, 9, 8 → 9 ± 4.303·1/√3 = [6.52, 11.48]; held-out −0.1, −0.15, −0.05 → −0.1 ± 0.1242
    assert "| LoRA-One | 0.001 (grid edge) | 91.00 ± 1.00 (n=3) | +9.00 [+6.52, +11.48] ✓ | 0.6000 ± 0.1323 | " \
           "-0.1000 [-0.2242, +0.0242] | 0 of 3 |" in table
    assert "| PiSSA | **missing** (tuning unfinished) | **missing** (0 of 3 seeds) |" in table
    assert stats.confidence_interval([10, 9, 8]) == pytest.approx((9 - 4.303 / math.sqrt(3), 9 + 4.303 / math.sqrt(3)))
    seeds = report.per_seed_table(runs)
    assert "<details>" in seeds and "| LoRA | 80.00 / 0.6000 (one class) | 82.00 / 0.7000 | 84.00 / 0.8000 |" in seeds
    tuning = report.tuning_table(runs, (0,))
    assert "| LoRA | 1.0000 | **0.8000** |" in tuning and "| LoRA-One | **0.7000** | 0.9000 |" in tuning
    assert "| PiSSA | missing | missing |" in tuning and "best rate may lie beyond it: LoRA, LoRA-One." in tuning


def test_degenerate_runs_and_the_majority_baseline():
    assert stats.is_degenerate({"a": 95, "b": 5}) and not stats.is_degenerate({"a": 94, "b": 6})
    assert stats.majority_label({"negative": 3, "positive": 3}, ["negative", "positive"]) == "negative"
    mrpc = report.TaskRuns(Task("mrpc", (), "glue", (), "dev"), [report.MethodRuns("LoRA", 1e-3, True, 1, runs={1: {
        "eval": {"glue": {"main_metric": "f1", "f1": 0.8, "gold_counts": {"equivalent": 3, "not_equivalent": 1}}}}})],
        [], ["not_equivalent", "equivalent"])
    # always `equivalent` on 3 positives and 1 negative: precision 3/4, recall 1, F1 = 2·0.75/1.75 = 85.71
    label, value, rows = report.majority_baseline(mrpc)
    assert (label, rows) == ("equivalent", 4) and value == pytest.approx(100 * 6 / 7)


def test_verdicts_from_the_data(fake_runs):
    _, runs = fake_runs
    init = report.verdict_init_alone(runs)
    assert init.startswith("(a) init alone lowers held-out loss: **yes (resolved)**: base 2.0000 → after the LoRA-One "
                           "init, no step 1.5000; paired difference")
    # symmetric: LoRA's final mean 0.7; LoRA's mean curve 2.0, 1.0, 0.7 reaches it at step 4, LoRA-One's
    # 1.5, 0.65, 0.6 at step 2
    speed = report.verdict_speed(runs, 2)
    assert "LoRA-One at step **2**, LoRA at step **4** (ratio 0.50×; target 0.7000" in speed
    assert "measured every 2 steps" in speed
    ranking = report.verdict_ranking(runs)
    assert "LoRA-One better (resolved), +9.00 [+6.52, +11.48] ✓" in ranking
    assert "spectral init only worse (resolved)" in ranking
    assert "Clearly above the majority class (60.00" in ranking and ": LoRA, LoRA-One." in ranking
    curves = report.curve_table(runs)
    # averaged over training (trapezoids over 0-2-4): LoRA (2.0+1.0)/2·2 + (1.0+0.7)/2·2 = 4.7 → 1.175
    assert "| LoRA | 4 | 1.1750 |" in curves and "| LoRA-One | 2 |" in curves
    assert "| spectral init only | not reached | – |" in curves


def test_verdicts_say_what_was_not_measured():
    empty = report.TaskRuns(Task("cola", (), "glue", (), "dev"), [report.MethodRuns("LoRA", None, True, 3)], [], [])
    assert "**not measured**" in report.verdict_init_alone(empty)
    assert "**not measured**" in report.verdict_speed(empty, 4) and "**not measured**" in report.verdict_ranking(empty)
    assert stats.first_step_at_or_below([(0, 3.0), (4, 2.0)], 1.0) is None
    assert stats.mean_over_steps([(0, 1.0)]) is None and stats.mean_over_steps([(0, 2.0), (4, 0.0)]) == 1.0


def test_figures_are_small_deterministic_pngs_with_clipped_bars(fake_runs, tmp_path):
    _, runs = fake_runs
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first, second = (figures.plot_task(runs, tmp_path / d, "accuracy (%)", (0.0, 100.0), ("negative", 60.0, 10))
                     for d in ("a", "b"))
    assert sorted(first) == ["grid", "loss", "metric"]
    for kind in first:
        assert first[kind].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and first[kind].stat().st_size < 150_000
        assert first[kind].read_bytes() == second[kind].read_bytes()
    assert stats.clip(95.0, 105.0, (0.0, 100.0)) == (95.0, 100.0)


def test_reproduction_markdown_and_the_fewer_records_guard(fake_runs, tmp_path):
    study, _ = fake_runs
    markdown = tmp_path / "REPRODUCTION.md"
    written = report.write_reproduction(study, fake_record, lambda task: ["negative", "positive"], markdown,
                                        tmp_path / "figures")
    text = markdown.read_text()
    assert "never edit\nby hand" in text and "<!-- records: 13 -->" in text  # 4 tuning + 9 seed runs
    assert "- machine: a CPU, 1 torch threads" in text
    assert "state feedfacecafebeef, computed at commit 0123456789ab" in text
    assert "- tuning runs finished: 4 of 6" in text and "seed runs finished: 9 of 12" in text
    assert "sst2 PiSSA (3 seeds)" in text
    assert "![sst2 loss](figures/sst2_loss.png)" in text and len([p for p in written if p.suffix == ".png"]) == 3
    again = tmp_path / "again.md"
    report.write_reproduction(study, fake_record, lambda task: ["negative", "positive"], again, tmp_path / "figures")
    assert again.read_text() == text  # nothing of the clock or the machine that wrote it
    fewer = lambda cell: None if cell.method == "LoRA-One" else fake_record(cell)  # noqa: E731
    with pytest.raises(ValueError, match="holds 13 records, these 8"):
        report.write_reproduction(study, fewer, lambda task: ["negative", "positive"], markdown, tmp_path / "figures")
    report.write_reproduction(study, fewer, lambda task: ["negative", "positive"], markdown, tmp_path / "figures",
                              force=True)
    assert "<!-- records: 8 -->" in markdown.read_text()


def test_the_committed_report_is_what_the_committed_records_generate(tmp_path):
    """A fresh clone regenerates REPRODUCTION.md byte for byte from docs/reproduction/ alone."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import reproduce

    report.write_reproduction(cpu_study(), reproduce.record_reader(), reproduce.label_words,
                              tmp_path / "REPRODUCTION.md", tmp_path / "docs" / "reproduction",
                              reproduce.extra_sections(), force=True)
    assert (tmp_path / "REPRODUCTION.md").read_text() == (ROOT / "REPRODUCTION.md").read_text()
    for figure in (tmp_path / "docs" / "reproduction").glob("*.png"):
        assert figure.read_bytes() == (ROOT / "docs" / "reproduction" / figure.name).read_bytes(), figure.name

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


@pytest.mark.parametrize("table, experiment, runs_per_method",
                         [("gsm8k", "llama2_metamath", 3), ("glue", "t5_glue", 15)])
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
    named = [(c.init.name, c.init.get("direction") if c.init.name == "gradient" else None, c.optim.name)
             for c in methods]
    assert named == [
        ("default", None, "adamw"), ("default", None, "loraplus"), ("pissa", None, "adamw"),
        ("gradient", "LoRA-GA", "adamw"), ("gradient", "LoRA-One", "adamw"), ("gradient", "LoRA-One", "scaled_adamw")]
    with pytest.raises(ConfigError, match="paper table 'nope'"):
        paper.paper_commands("nope")


def test_paper_dry_run_prints_and_launches_nothing():
    done = subprocess.run([sys.executable, "scripts/reproduce.py", "paper", "--table", "gsm8k", "--dry-run",
                           "model.learning_rate=1e-4,2e-4"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 6
    assert all(line.startswith("python run_exp.py -m hydra/launcher=slurm experiment=llama2_metamath")
               and "model.learning_rate=1e-4,2e-4" in line for line in lines)
    assert not (ROOT / "multirun" / "paper" / "gsm8k").exists()


def test_cpu_refuses_another_code_state_and_names_the_worktree_that_resumes_it(tmp_path, monkeypatch):
    import importlib.util
    import types

    spec = importlib.util.spec_from_file_location("reproduce_script", ROOT / "scripts" / "reproduce.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    state = tmp_path / "study.json"
    state.write_text(json.dumps({"commit": "abcdef0123456789" * 2 + "abcdef01", "digest": "0000000000000000",
                                 "dirty": False}))
    monkeypatch.setattr(script, "STUDY_STATE", state)
    monkeypatch.setattr(script, "clean_code_state", lambda: CODE)
    with pytest.raises(SystemExit, match=r"code state 0000000000000000, this checkout is feedfacecafebeef .*"
                                         r"`git worktree add \.\./study abcdef012345`"):
        script.cpu(types.SimpleNamespace(new_code_state=False))
    assert json.loads(state.read_text())["digest"] == "0000000000000000"  # the study's state is left as it was
