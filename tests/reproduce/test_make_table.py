"""scripts/make_table.py: hand-computed cells from written results, and a real small sweep."""
import json
import statistics
import subprocess
import sys

import matplotlib.image
import pytest
import yaml

from conftest import ROOT, TINY

sys.path.insert(0, str(ROOT / "scripts"))
import make_table  # noqa: E402

from lora_one.reproduce import report  # noqa: E402
from lora_one.reproduce.paper import PAPER_METHODS  # noqa: E402
from lora_one.reproduce.plan import Task, slug  # noqa: E402


def write_results(path, direction, seed, eval_loss, curve, benchmarks=None, init="gradient", optim="adamw",
                  overrides=None, provenance=None, **config):
    """A results.json as run_exp writes it (the config keys tests need; one step per training-loss
    point), and the run's Hydra overrides in .hydra/overrides.yaml when given."""
    path.mkdir(parents=True)
    results = {"config": {"init": {"name": init, "direction": direction}, "optim": {"name": optim},
                          "dataset": {"name": "toy_math"}, "seed": seed, **config},
               "eval_loss": eval_loss, "train_loss_curve": curve, "steps": len(curve)}
    if benchmarks is not None:
        results["eval"] = benchmarks
    if provenance is not None:
        results["provenance"] = provenance
    (path / "results.json").write_text(json.dumps(results))
    if overrides is not None:
        (path / ".hydra").mkdir()
        (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))


def table_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines()[2:] if line.startswith("|")]


def test_cells_are_mean_and_sample_std_over_seeds(tmp_path):
    write_results(tmp_path / "0", "LoRA-One", 1, 1.0, [3.0, 2.0])
    write_results(tmp_path / "1", "LoRA-One", 2, 2.0, [3.0, 1.0])
    write_results(tmp_path / "2", "LoRA-GA", 1, 4.0, [3.0, 2.5, 2.0])
    write_results(tmp_path / "3", None, 1, 5.0, [3.0, 2.9], init="pissa", optim="loraplus")
    make_table.main([str(tmp_path), "--out", str(tmp_path / "table")])
    markdown = (tmp_path / "table" / "table.md").read_text()
    assert markdown.splitlines()[0] == "| Method | seeds | toy_math eval loss ↓ |"
    # LoRA-One: mean(1, 2) = 1.5, sample std = 1/√2 ≈ 0.7071; the lowest loss is bold; one seed has no spread
    assert table_rows(markdown) == ["| LoRA-GA + adamw | 1 | 4.0000 (1 seed) |",
                                    "| LoRA-One + adamw | 2 | **1.5000 ± 0.7071** |",
                                    "| PiSSA + loraplus | 1 | 5.0000 (1 seed) |"]
    assert "Provenance (all 4 runs): provenance not recorded." in markdown
    latex = (tmp_path / "table" / "table.tex").read_text()
    assert r"LoRA-One + adamw & 2 & \textbf{1.5000 $\pm$ 0.7071} \\" in latex
    assert r"toy\_math eval loss $\downarrow$" in latex
    image = matplotlib.image.imread(tmp_path / "table" / "loss_toy_math.png")
    assert image.shape[0] > 300 and image.shape[1] > 500


def lr_sweep(root, with_overrides: bool, **config):
    """model.learning_rate=1e-3,1e-1 × seed=1,2, as Hydra's multirun lays it out: eval losses
    (lr 1e-3: 2.0, 3.0; lr 1e-1: 5.0, 9.0). eval.gsm8k.seed follows the seed (${seed}), the cache
    and wandb dirs differ per run: none of them separates runs."""
    losses = {(1e-1, 1): 5.0, (1e-1, 2): 9.0, (1e-3, 1): 2.0, (1e-3, 2): 3.0}
    for job, ((lr, seed), loss) in enumerate(losses.items()):
        overrides = ["model=tiny_llama", f"model.learning_rate={lr:g}", f"seed={seed}"] if with_overrides else None
        write_results(root / f"{job}_lr{lr:g}_seed{seed}", "LoRA-One", seed, loss, [loss], overrides=overrides,
                      model={"name": "tiny_llama", "learning_rate": lr}, eval={"gsm8k": {"seed": seed, "limit": 5}},
                      cache_dir=f"/cache/{job}", wandb={"mode": "offline", "dir": f"/w/{job}"}, **config)


@pytest.mark.parametrize("with_overrides", [True, False])
def test_a_learning_rate_sweep_gives_one_row_per_rate(tmp_path, with_overrides):
    """Not one row "LoRA-One + adamw, 4 seeds": two rows with a learning-rate column, each the mean ±
    sample std of its own two seeds (lr 1e-3: 2.5 ± 0.7071; lr 1e-1: 7.0 ± 2.8284), whether the
    setting comes from Hydra's overrides or, without them, from the resolved configs."""
    lr_sweep(tmp_path, with_overrides)
    rows, settings, columns = make_table.aggregate(make_table.load_runs(tmp_path))
    assert settings == ["model.learning_rate"] and columns == [("toy_math", "eval loss")]
    assert [(r.settings, r.cells[columns[0]]) for r in rows] == [(("0.001",), [2.0, 3.0]), (("0.1",), [5.0, 9.0])]
    assert table_rows(make_table.markdown_table(rows, settings, columns)) == [
        "| LoRA-One + adamw | 0.001 | 2 | **2.5000 ± 0.7071** |",
        "| LoRA-One + adamw | 0.1 | 2 | 7.0000 ± 2.8284 |"]


@pytest.mark.parametrize("layout, written", [("table", "table.md"), ("reproduction", "reproduction.md")])
def test_same_overrides_with_different_resolved_configs_are_refused(tmp_path, layout, written):
    lr_sweep(tmp_path, with_overrides=True, peft={"lora_alpha": 16})
    moved = json.loads((tmp_path / "1_lr0.1_seed2" / "results.json").read_text())
    moved["config"]["peft"]["lora_alpha"] = 32  # the default changed before seed 2 of lr 0.1 was launched
    (tmp_path / "1_lr0.1_seed2" / "results.json").write_text(json.dumps(moved))
    with pytest.raises(SystemExit) as refused:
        make_table.main([str(tmp_path), "--layout", layout])
    assert str(refused.value) == ("error: refusing to average 0_lr0.1_seed1 and 1_lr0.1_seed2: same overrides, but "
                                  "their resolved configs differ in peft.lora_alpha (16 vs 32)")
    assert not (tmp_path / written).exists()


def provenance_record(commit, start, end):
    return {"git": {"commit": commit, "dirty": False}, "packages": {"torch": "2.13.0", "peft": None},
            "python": "3.11.7", "cpu": "Some CPU", "gpus": [], "torch_threads": 2, "hostname": "node1", "start": start,
            "end": end}


def test_provenance_shown_once_when_all_runs_agree_else_per_row(tmp_path):
    times = [("2026-01-01T10:00:00+00:00", "2026-01-01T10:05:00+00:00"),
             ("2026-01-01T09:00:00+00:00", "2026-01-01T09:30:00+00:00")]
    for seed, (start, end) in enumerate(times, 1):
        write_results(tmp_path / "same" / str(seed), "LoRA-One", seed, 1.0, [1.0],
                      provenance=provenance_record("a" * 40, start, end))
    rows, _, _ = make_table.aggregate(make_table.load_runs(tmp_path / "same"))
    assert make_table.provenance_section(rows) == (
        "Provenance (all 2 runs): commit aaaaaaaaaaaa; python 3.11.7, torch 2.13.0; Some CPU, 2 torch threads, host "
        "node1; runs from 2026-01-01T09:00:00+00:00 to 2026-01-01T10:05:00+00:00.\n")
    for seed, commit in ((1, "a" * 40), (2, "b" * 40)):
        write_results(tmp_path / "mixed" / f"ga{seed}", "LoRA-GA", seed, 1.0, [1.0],
                      provenance=provenance_record(commit, *times[0]))
    write_results(tmp_path / "mixed" / "one", "LoRA-One", 1, 1.0, [1.0])
    rows, _, _ = make_table.aggregate(make_table.load_runs(tmp_path / "mixed"))
    section = make_table.provenance_section(rows).splitlines()
    assert section[0] == "Provenance differs between runs:"
    assert section[1].startswith("- LoRA-GA + adamw: commit aaaaaaaaaaaa; ")
    assert "(1 run); and commit bbbbbbbbbbbb" in section[1]
    assert section[2] == "- LoRA-One + adamw: provenance not recorded (1 run)"


def test_benchmark_headline_metrics_become_columns(tmp_path):
    for seed, (gsm, common) in enumerate([(0.25, 0.5), (0.35, 0.7)]):
        write_results(tmp_path / str(seed), "LoRA-One", seed, 1.0, [1.0],
                      {"gsm8k": {"accuracy": gsm, "n": 100, "seconds": 3.0},
                       "commonsense": {"boolq": {"accuracy": 0.9}, "mean_accuracy": common},
                       "mmlu": {"overall": {"accuracy": 0.4, "n": 10}, "categories": {}}})
    [row], settings, columns = make_table.aggregate(make_table.load_runs(tmp_path))
    assert settings == [] and row.method == "LoRA-One + adamw"
    assert columns == [("commonsense", "mean_accuracy"), ("gsm8k", "accuracy"), ("mmlu", "overall/accuracy")]
    gsm = row.cells[("gsm8k", "accuracy")]
    assert gsm == [0.25, 0.35]
    assert make_table.cell_text(gsm, "accuracy") == f"30.00 ± {100 * statistics.stdev(gsm):.2f}"  # 7.07


def paper_gsm8k_sweep(root):
    """LoRA, LoRA-One and LoRA-One + scaled_adamw × seeds 1, 2 on gsm8k, laid out and launched as
    `reproduce.py paper --table gsm8k` does (<table>/<method>/<job>). LoRA-One's runs record their
    provenance (wall times 300 s and 1800 s), the others do not."""
    runs = {("LoRA", "default", None, "adamw"): [(0.50, 1.2, None), (0.548, 1.3, None)],
            ("LoRA-One", "gradient", "LoRA-One", "adamw"): [
                (0.55, 1.0, ("2026-01-01T10:00:00+00:00", "2026-01-01T10:05:00+00:00")),
                (0.60, 1.2, ("2026-01-01T09:00:00+00:00", "2026-01-01T09:30:00+00:00"))],
            ("LoRA-One + scaled_adamw", "gradient", "LoRA-One", "scaled_adamw"): [(0.40, 1.5, None), (0.46, 1.9, None)]}
    for (method, init, direction, optim), seeds in runs.items():
        method_overrides = [f"init={init}", *([f"init.direction={direction}"] if direction else []),
                            *([f"optim={optim}"] if optim != "adamw" else [])]
        for seed, (accuracy, loss, times) in enumerate(seeds, 1):
            write_results(root / "gsm8k" / slug(method) / str(seed - 1), direction, seed, loss, [3.0, 2.0, 1.5],
                          {"gsm8k": {"accuracy": accuracy, "n": 1319}}, init=init, optim=optim,
                          overrides=["hydra/launcher=slurm", "experiment=llama2_metamath", *method_overrides,
                                     f"seed={seed}"],
                          provenance=provenance_record("a" * 40, *times) if times else None,
                          model={"name": "llama2_7b", "learning_rate": 2e-4}, eval={"gsm8k": {"seed": seed}})


def test_reproduction_layout_of_a_paper_sweep(tmp_path):
    """Per task, REPRODUCTION.md's table: a row per method, the metric in percent with its seed count,
    each paired to LoRA's seeds. By hand: LoRA accuracy (50, 54.8) → 52.40 ± 4.8/√2 = 3.39, loss (1.2,
    1.3) → 1.2500 ± 0.0707. LoRA-One accuracy (55, 60) → 57.50 ± 5/√2 = 3.54, minus LoRA's: 5, 5.2 →
    5.10 ± t(0.975, 1)·0.1414/√2 = 12.706·0.1 → [3.83, 6.37], resolved; held-out loss (1.0, 1.2) → 1.1000
    ± 0.1414, minus LoRA's: -0.2, -0.1 → -0.15 ± 12.706·0.05 → [-0.7853, +0.4853]; wall time (300 s +
    1800 s) / 2 = 1050 s. scaled_adamw (40, 46) → 43.00 ± 6/√2 = 4.24, minus LoRA's: -10, -8.8 → -9.40 ±
    12.706·0.6 → [-17.02, -1.78]; loss (1.5, 1.9) → 1.7000 ± 0.2828, minus LoRA's: 0.3, 0.6 → +0.45 ±
    12.706·0.15 → [-1.4559, +2.3559]. gsm8k has no per-class counts, so no one-class runs; LoRA and
    scaled_adamw recorded no wall time. Published: LoRA-One's README curve [1], LoRA-GA's paper [2]."""
    paper_gsm8k_sweep(tmp_path / "sweep")
    make_table.main([str(tmp_path / "sweep"), "--layout", "reproduction", "--out", str(tmp_path / "out")])
    markdown = (tmp_path / "out" / "reproduction.md").read_text()
    section = markdown.split("## gsm8k\n\n")[1].split("\n\n")[0].splitlines()
    assert section == [
        "| method | lr | accuracy (%), mean ± std | Δ vs LoRA, paired [95 % CI] | held-out loss | "
        "Δ loss vs LoRA, paired [95 % CI] | one-class runs | steps | wall time per run | published, paper scale |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        "| LoRA + adamw | 0.0002 | 52.40 ± 3.39 (n=2) | – | 1.2500 ± 0.0707 | – | – | 3 | – | "
        "55.2 / 58.9 [1]; 42.08 [2] |",
        "| LoRA-One + adamw | 0.0002 | 57.50 ± 3.54 (n=2) | +5.10 [+3.83, +6.37] ✓ | 1.1000 ± 0.1414 | "
        "-0.1500 [-0.7853, +0.4853] | – | 3 | 1050 s | 57.5 / 63.8 [1] |",
        "| LoRA-One + scaled_adamw | 0.0002 | 43.00 ± 4.24 (n=2) | -9.40 [-17.02, -1.78] ✓ | 1.7000 ± 0.2828 | "
        "+0.4500 [-1.4559, +2.3559] | – | 3 | – | not published |"]
    assert "Provenance differs between runs:" in markdown  # make_table's provenance section, per row
    assert "[1] LoRA-One official README" in markdown  # the published numbers' sources
    assert not (tmp_path / "out" / "table.md").exists()


def test_reproduction_layout_names_glue_tasks_and_datasets_without_benchmark(tmp_path):
    """A GLUE run is filed under its task with its main metric (CoLA: MCC ×100, (0.3, 0.5) → 40.00 ±
    14.14) and its one-class runs (seed 1 predicts `acceptable` for 96 of 100 rows: 1 of 2); a
    learning-rate sweep without benchmark under its dataset, one row per rate."""
    for seed, mcc, acceptable in ((1, 0.3, 96), (2, 0.5, 60)):
        write_results(tmp_path / "glue" / str(seed), None, seed, 0.5, [1.0], init="pissa",
                      benchmarks={"glue": {"accuracy": 0.8, "matthews_correlation": mcc,
                                           "main_metric": "matthews_correlation",
                                           "predicted_counts": {"acceptable": acceptable,
                                                                "unacceptable": 100 - acceptable}}},
                      model={"learning_rate": 1e-4}, eval={"glue": {"task": "cola"}}, dataset={"name": "cola"})
    rows, settings, _ = make_table.aggregate(make_table.load_runs(tmp_path / "glue"))
    assert make_table.reproduction_table("cola", make_table.rows_by_task(rows)["cola"], settings).splitlines()[2] == (
        "| PiSSA + adamw | 0.0001 | 40.00 ± 14.14 (n=2) | – | 0.5000 ± 0.0000 | – | 1 of 2 | 1 | – | "
        "not quoted (the paper's table is T5-base) |")
    lr_sweep(tmp_path / "lr", with_overrides=True)
    rows, settings, _ = make_table.aggregate(make_table.load_runs(tmp_path / "lr"))
    assert list(make_table.rows_by_task(rows)) == ["toy_math"]
    table = make_table.reproduction_table("toy_math", make_table.rows_by_task(rows)["toy_math"], settings)
    assert table.splitlines()[2:] == [
        "| LoRA-One + adamw | 0.001 | – (no benchmark) | – | 2.5000 ± 0.7071 | – | – | 1 | – | not published |",
        "| LoRA-One + adamw | 0.1 | – (no benchmark) | – | 7.0000 ± 2.8284 | – | – | 1 | – | not published |"]


def test_a_single_seed_is_shown_without_a_spread(tmp_path):
    """One seed has no sample std: its value and "(1 seed)", not "± 0.00", and no "(n=1)" beside it."""
    write_results(tmp_path / "0", None, 1, 0.5, [1.0], {"gsm8k": {"accuracy": 0.3}}, init="pissa",
                  model={"learning_rate": 1e-4}, eval={"gsm8k": {"seed": 1}})
    rows, settings, _ = make_table.aggregate(make_table.load_runs(tmp_path))
    table = make_table.reproduction_table("gsm8k", make_table.rows_by_task(rows)["gsm8k"], settings)
    assert table.splitlines()[2] == ("| PiSSA + adamw | 0.0001 | 30.00 (1 seed) | – | 0.5000 (1 seed) | – | – | 1 | "
                                     "– | 44.54 [2] |")

def test_the_study_and_a_sweep_format_the_same_runs_into_the_same_row(tmp_path):
    """LoRA and LoRA-One × seeds 1, 2 on SST-2 at lr 1e-3, read as a sweep's results.json by make_table
    and as the study's records by report.py: both rows are tables.py's, cell for cell (the method's name
    aside: make_table adds the optimizer). By hand, LoRA-One: accuracy (90, 92) → 91.00 ± 1.41, minus
    LoRA's (80, 84): 10, 8 → 9 ± 12.706·1 → [-3.71, +21.71]; held-out loss (0.5, 0.62) → 0.5600 ±
    0.0849, minus LoRA's (0.6, 0.7): -0.1, -0.08 → -0.09 ± 12.706·0.01 → [-0.2171, +0.0371]; no run
    predicts one class (LoRA's seed 1 does); wall time (300 s + 1800 s) / 2 = 1050 s."""
    runs = {("LoRA", "default", None): [(0.80, 0.6, 100), (0.84, 0.7, 60)],
            ("LoRA-One", "gradient", "LoRA-One"): [(0.90, 0.5, 60), (0.92, 0.62, 50)]}
    times = [("2026-01-01T10:00:00+00:00", "2026-01-01T10:05:00+00:00"),
             ("2026-01-01T09:00:00+00:00", "2026-01-01T09:30:00+00:00")]
    study = []
    for (method, init, direction), seeds in runs.items():
        for seed, (accuracy, loss, negative) in enumerate(seeds, 1):
            glue = {"accuracy": accuracy, "main_metric": "accuracy", "gold_counts": {"negative": 50, "positive": 50},
                    "predicted_counts": {"negative": negative, "positive": 100 - negative}}
            write_results(tmp_path / slug(method) / str(seed), direction, seed, loss, [1.0, 0.8], {"glue": glue},
                          init=init, provenance=provenance_record("a" * 40, *times[seed - 1]),
                          model={"learning_rate": 1e-3}, eval={"glue": {"task": "sst2"}}, dataset={"name": "sst2"})
        records = {seed: json.loads((tmp_path / slug(method) / str(seed) / "results.json").read_text())
                   for seed in (1, 2)}
        study.append(report.MethodRuns(method, 1e-3, True, 2, {1e-3: 0.5}, records))
    rows, settings, _ = make_table.aggregate(make_table.load_runs(tmp_path))
    sweep = make_table.reproduction_table("sst2", make_table.rows_by_task(rows)["sst2"], settings).splitlines()
    cpu = report.task_table(report.TaskRuns(Task("sst2", (), "glue", (), "dev"), study, [], ["negative", "positive"]))
    without_method = [line.split(" | ", 1)[1] for line in cpu.splitlines()[-2:]]
    assert [line.split(" | ", 1)[1] for line in sweep[-2:]] == without_method
    assert without_method == [
        "0.001 | 82.00 ± 2.83 (n=2) | – | 0.6500 ± 0.0707 | – | 1 of 2 | 2 | 1050 s | "
        "not quoted (the paper's table is T5-base) |",
        "0.001 | 91.00 ± 1.41 (n=2) | +9.00 [-3.71, +21.71] | 0.5600 ± 0.0849 | -0.0900 [-0.2171, +0.0371] | "
        "0 of 2 | 2 | 1050 s | not quoted (the paper's table is T5-base) |"]


def test_paper_names_of_make_table_methods_are_the_paper_sweeps():
    """make_table names each of paper.py's methods by init + optimizer; published.py by the paper's name."""
    names = {"LoRA + adamw": "LoRA", "LoRA + loraplus": "LoRA+", "PiSSA + adamw": "PiSSA",
             "LoRA-GA + adamw": "LoRA-GA", "LoRA-One + adamw": "LoRA-One",
             "LoRA-One + scaled_adamw": "LoRA-One + scaled_adamw"}
    assert {method: make_table.paper_name(method) for method in names} == names
    assert set(names.values()) == set(PAPER_METHODS)


def test_missing_directory_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no results.json under"):
        make_table.main([str(tmp_path)])


@pytest.mark.slow
def test_table_from_a_real_learning_rate_sweep(tmp_path):
    """model.learning_rate=1e-3,1e-1 × seed=1,2 on tiny_llama (Hydra's multirun), then the table: two
    rows with a learning-rate column, each the mean ± std of its two seeds' eval losses read back."""
    sweep = tmp_path / "sweep"
    command = [sys.executable, "run_exp.py", "-m", *TINY, "model.max_steps=3", "wandb.mode=disabled",
               "model.learning_rate=1e-3,1e-1", "seed=1,2", f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    table = subprocess.run([sys.executable, "scripts/make_table.py", str(sweep)], cwd=ROOT, capture_output=True,
                           text=True)
    assert table.returncode == 0, table.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in sweep.rglob("results.json")]
    assert len(runs) == 4
    lines = table.stdout.splitlines()
    assert lines[0] == "| Method | model.learning_rate | seeds | toy_math eval loss ↓ |"
    for row, lr in zip(lines[2:4], (0.001, 0.1)):
        losses = [r["eval_loss"] for r in runs if r["config"]["model"]["learning_rate"] == lr]
        expected = f"{statistics.fmean(losses):.4f} ± {statistics.stdev(losses):.4f}"
        assert row.startswith(f"| LoRA-One + adamw | {lr} | 2 | ") and expected in row
    assert (sweep / "table.tex").exists() and (sweep / "loss_toy_math.png").exists()
    print(table.stdout)


def test_settings_sort_numbers_numerically():
    values = ["0.001", "tiny_llama", "1e-05", "0.1", "smollm2_135m"]
    assert sorted(values, key=make_table.setting_order) == ["1e-05", "0.001", "0.1", "smollm2_135m", "tiny_llama"]


def test_harness_metrics_become_columns_named_as_the_harness_names_them(tmp_path):
    """eval=lm_eval: a column per harness task and metric (filter and shots in its name), stderr left out;
    by hand, strict-match (0.2, 0.3) → 25.00 ± 7.07, arc_easy acc_norm (0.5, 0.6) → 55.00 ± 7.07."""
    for seed, (strict, flexible, norm) in enumerate([(0.2, 0.4, 0.5), (0.3, 0.5, 0.6)]):
        harness = {"results": {"gsm8k": {"exact_match,strict-match": strict, "exact_match_stderr,strict-match": 0.1,
                                         "exact_match,flexible-extract": flexible},
                               "arc_easy": {"acc,none": 0.4, "acc_stderr,none": 0.05, "acc_norm,none": norm}},
                   "n-shot": {"gsm8k": 5, "arc_easy": 0}, "versions": {"gsm8k": 3.0, "arc_easy": 1.0}}
        write_results(tmp_path / str(seed), "LoRA-One", seed, 1.0, [1.0], {"lm_eval": harness})
    [row], _, columns = make_table.aggregate(make_table.load_runs(tmp_path))
    assert columns == [("arc_easy", "acc (lm-eval, 0-shot)"), ("arc_easy", "acc_norm (lm-eval, 0-shot)"),
                       ("gsm8k", "exact_match flexible-extract (lm-eval, 5-shot)"),
                       ("gsm8k", "exact_match strict-match (lm-eval, 5-shot)")]
    strict = row.cells[("gsm8k", "exact_match strict-match (lm-eval, 5-shot)")]
    assert make_table.cell_text(strict, "exact_match") == "25.00 ± 7.07"
    assert make_table.header_of(columns[3]) == "gsm8k exact_match strict-match (lm-eval, 5-shot) (%) ↑"
    assert make_table.cell_text(row.cells[columns[1]], "acc_norm") == "55.00 ± 7.07"
    by_task = make_table.rows_by_task([row])
    assert sorted(by_task) == ["arc_easy acc (lm-eval, 0-shot)", "arc_easy acc_norm (lm-eval, 0-shot)",
                               "gsm8k exact_match flexible-extract (lm-eval, 5-shot)",
                               "gsm8k exact_match strict-match (lm-eval, 5-shot)"]
    assert by_task["gsm8k exact_match strict-match (lm-eval, 5-shot)"][0][3] == {0: 20.0, 1: 30.0}
