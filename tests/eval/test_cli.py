"""`lora-one-eval <task> [options]` is eval/<task>.py under one name: it offers every benchmark of conf/eval,
each with the options of its script and their resolved defaults, and writes the same predictions and
metrics, recording the command as typed; a partial predictions file names the --limit that fits it, an
adapter it cannot apply is one line."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, TINY, compose_config, questions_file, run_experiment
from lora_one.eval import BENCHMARKS, Benchmark, cli
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
    known = "'commonsense', 'glue', 'gsm8k', 'humaneval', 'lm_eval', 'mmlu'"
    assert f"argument task: invalid choice: 'gsm8' (choose from {known})" in capsys.readouterr().err


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


def test_eval_cli_help_shows_resolved_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line per option
    with pytest.raises(SystemExit) as done:
        cli.main("gsm8k", ["--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    path = os.path.normpath(compose_config(["eval=gsm8k"]).eval.gsm8k.path)
    assert f"default: {path} (from paths.data_dir; conf/eval/gsm8k.yaml)" in shown and "${" not in shown


def test_eval_cli_names_the_limit_for_a_partial_predictions_file_and_records_no_model(tmp_path):
    questions = questions_file(tmp_path, [3, 4, 5])
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text('{"idx": 0, "completion": "#### 3"}\n{"idx": 1, "completion": "#### 7"}\n')
    command = ["--predictions", str(predictions), "--path", questions, "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as refused:
        cli.main("gsm8k", command)
    assert str(refused.value) == (f"error: {predictions}: no completion for 1 of 3 questions, e.g. '2'; it answers 2, "
                                  "the ones --limit 2 selects: add it to score only those")
    metrics = cli.main("gsm8k", [*command, "--limit", "2", "--model", "tiny_llama"])
    assert (metrics["correct"], metrics["n"]) == (1, 2)
    summary = json.loads((tmp_path / "out" / "gsm8k_results.json").read_text())
    assert (summary["predictions_in"], summary["model"], summary["adapter"]) == (str(predictions), None, None)


@pytest.mark.parametrize("damage,cause", [
    (lambda adapter: (adapter / "adapter_config.json").write_text("{bad"), "JSONDecodeError: Expecting property name"),
    (lambda adapter: (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 16), "SafetensorError: "),
])
def test_eval_cli_names_an_adapter_it_cannot_apply(tmp_path, damage, cause):
    """An adapter dir is read back, so checked like data: a damaged one is one line naming it, not a traceback."""
    adapter = tmp_path / "adapter"
    run_experiment(TINY + ["model.max_steps=1", "checkpoint.every_n_steps=0"], tmp_path / "run")
    shutil.copytree(tmp_path / "run" / "adapter", adapter)
    damage(adapter)
    with pytest.raises(SystemExit, match=rf"^error: --adapter '{adapter}' cannot be applied to model 'tiny_llama' "
                                         rf"\({cause}"):
        cli.main("gsm8k", ["--model", "tiny_llama", "--adapter", str(adapter), "--path", questions_file(tmp_path, [3]),
                           "--output_dir", str(tmp_path / "out")])
