"""`lora-one-eval <task> [options]` is eval/<task>.py under one name: it offers every benchmark of conf/eval,
each with the options of its script, and writes the same predictions and metrics, recording the command as typed."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from lora_one.eval import BENCHMARKS, Benchmark
from lora_one.eval.cli import eval_command, main

TASKS = sorted(path.stem for path in (ROOT / "conf" / "eval").glob("*.yaml") if path.stem != "none")


def test_every_eval_config_option_is_a_registered_benchmark():
    assert sorted(BENCHMARKS) == TASKS
    assert all(isinstance(benchmark, Benchmark) and benchmark.name == task for task, benchmark in BENCHMARKS.items())


def test_help_lists_the_tasks(capsys):
    with pytest.raises(SystemExit) as done:
        eval_command(["--help"])
    shown = capsys.readouterr().out
    assert done.value.code == 0 and shown.startswith("usage: lora-one-eval [-h] task ...")
    listed = shown.split("tasks:\n", 1)[1].splitlines()
    assert sorted(line.split()[0] for line in listed) == TASKS


def test_a_task_takes_the_options_of_its_script(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line per option
    shown = {}
    for name, run in (("script", lambda: main("glue", ["--help"])), ("command", lambda: eval_command(["glue", "-h"]))):
        with pytest.raises(SystemExit):
            run()
        shown[name] = capsys.readouterr().out
    assert shown["command"].startswith("usage: lora-one-eval glue [-h] [--model MODEL]")

    def options(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.lstrip().startswith("--")]

    assert any(line.lstrip().startswith("--task TASK") for line in options(shown["script"]))
    assert options(shown["command"]) == options(shown["script"])


def test_an_unknown_task_is_refused_with_the_known_ones(capsys):
    with pytest.raises(SystemExit) as refused:
        eval_command(["gsm8", "--limit", "1"])
    assert refused.value.code == 2
    assert "argument task: invalid choice: 'gsm8' (choose from 'gsm8k', 'humaneval'" in capsys.readouterr().err


def test_it_scores_as_the_script_does_and_records_its_command(shared_data, tmp_path):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text("".join(json.dumps({"idx": i, "completion": c}) + "\n"
                                   for i, c in enumerate(["#### 18", "The answer is 4.", "#### 70,000"])))
    options = ["--predictions", str(predictions), "--path", str(shared_data / "gsm8k" / "test.jsonl"), "--limit", "3"]
    main("gsm8k", options + ["--output_dir", str(tmp_path / "script")], prog="gsm8k.py")
    assert eval_command(["gsm8k", *options, "--output_dir", str(tmp_path / "command")]) is None  # exit status 0

    def written(run: str):
        results = json.loads((tmp_path / run / "gsm8k_results.json").read_text())
        return results, (tmp_path / run / "gsm8k_predictions.jsonl").read_text()

    (script, script_records), (command, command_records) = written("script"), written("command")
    assert command_records == script_records and len(command_records.splitlines()) == 3
    assert script["metrics"]["correct"] == 2 and script["metrics"]["n"] == 3  # gold: 18, 3, 70000
    different = {"command", "wall_time_s", "predictions_out"}
    assert {k: v for k, v in command["metrics"].items() if k != "seconds"} == \
        {k: v for k, v in script["metrics"].items() if k != "seconds"}
    assert {k: v for k, v in command.items() if k not in different | {"metrics"}} == \
        {k: v for k, v in script.items() if k not in different | {"metrics"}}
    assert script["command"] == " ".join(["gsm8k.py", *options, "--output_dir", str(tmp_path / "script")])
    assert command["command"] == " ".join(["lora-one-eval gsm8k", *options, "--output_dir", str(tmp_path / "command")])


def test_python_m_lora_one_eval_is_the_command():
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "lora_one.eval", "--help"], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: lora-one-eval [-h] task ...") and "\n  humaneval  " in done.stdout
