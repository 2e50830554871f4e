"""An evaluator never costs a run its training: every benchmark's inputs and settings are checked
before the first step, and a benchmark that still fails after training leaves results.json with the
training's results and the failure, then a one-line error (issue #21, item 9)."""
import json

import pytest

from conftest import QUICK, compose_config, run_experiment
from lora_one import ConfigError
from lora_one.config import validate_config
from lora_one.eval import BENCHMARKS, EvaluationError

RUN = QUICK + ["wandb.mode=disabled"]
QUESTIONS = [{"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"},
             {"question": "What is 3 + 4?", "answer": "#### 7"}]


def gsm8k_file(path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("setting,message", [
    ("eval.gsm8k.limit=0", r"eval.gsm8k.limit must be ≥ 1 \(got 0\): null scores every question"),
    ("eval.gsm8k.temperature=-1", r"eval.gsm8k.temperature must be ≥ 0 \(got -1\)"),
    ("eval.gsm8k.batch_size=0", r"eval.gsm8k.batch_size must be ≥ 1"),
    ("eval.gsm8k.max_new_tokens=0", r"eval.gsm8k.max_new_tokens must be ≥ 1"),
    ("eval.gsm8k.top_p=0", r"eval.gsm8k.top_p must be in \(0, 1\]"),
    ("eval.humaneval.num_samples=0", r"eval.humaneval.num_samples must be ≥ 1"),
])
def test_evaluator_settings_are_range_checked(setting, message):
    task = setting.split(".")[1]
    opt_in = ["++eval.humaneval.confirm_run_unsafe_code=true"] if task == "humaneval" else []
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config([f"eval={task}", *opt_in, setting]))
    validate_config(compose_config([f"eval={task}", *opt_in, setting.split("=")[0] + "=1"]))  # the same key, in range


@pytest.mark.parametrize("lines,message", [
    (None, r"data file '.*missing.jsonl' does not exist"),
    ([], r"eval.gsm8k: no questions to score"),
    ([json.dumps(QUESTIONS[0]), '{"question": "unclosed"'], r"questions.jsonl: line 2: not valid JSON"),
    ([json.dumps(QUESTIONS[0]), json.dumps({"question": "no answer"})], r"questions.jsonl': line 2 lacks 'answer'"),
])
def test_a_bad_benchmark_file_stops_the_run_before_its_first_step(tmp_path, lines, message):
    path = str(tmp_path / "missing.jsonl") if lines is None else gsm8k_file(tmp_path / "questions.jsonl", lines)
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        run_experiment(RUN + ["eval=gsm8k", f"eval.gsm8k.path={path}"], run_dir)
    assert not (run_dir / "adapter").exists() and not (run_dir / "init").exists()  # nothing was initialised or trained


def test_a_missing_glue_dev_file_stops_the_run_before_its_first_step(shared_data, tmp_path):
    folder = tmp_path / "sst2"
    folder.mkdir()
    (folder / "train.tsv").write_text("".join((shared_data / "glue" / "SST-2" / "train.tsv").open().readlines()[:40]))
    with pytest.raises(ConfigError, match=r"GLUE file '.*sst2/dev.tsv' does not exist"):
        run_experiment(RUN[1:] + ["model=tiny_llama", "dataset=sst2", f"dataset.path={folder}", "eval=glue"],
                       tmp_path / "run")
    assert not (tmp_path / "run" / "adapter").exists()


def test_a_benchmark_failing_after_training_keeps_the_training_results(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("the grader crashed")

    monkeypatch.setattr(BENCHMARKS["gsm8k"], "evaluate", crash)
    path = gsm8k_file(tmp_path / "questions.jsonl", [json.dumps(q) for q in QUESTIONS])
    run_dir = tmp_path / "run"
    with pytest.raises(EvaluationError, match=r"eval gsm8k failed \(RuntimeError: the grader crashed\); "
                                              r"the training's results are in .*run/results.json"):
        run_experiment(RUN + ["eval=gsm8k", f"eval.gsm8k.path={path}"], run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["eval"] == {"gsm8k": {"error": "RuntimeError: the grader crashed"}}
    assert results["steps"] == 1 and results["eval_loss"] > 0 and (run_dir / "adapter").is_dir()
