"""HumanEval scoring in the sandbox: canonical solutions pass, solutions of other problems fail,
pass@k agrees with the closed form 1 - C(n-c, k) / C(n, k)."""
import json
from math import comb

import pytest

from conftest import compose_config
from lora_one import ConfigError
from lora_one.eval import BENCHMARKS, humaneval, run_benchmark


def humaneval_config(**changes):
    cfg = compose_config(["eval=humaneval"]).eval.humaneval
    cfg.timeout_s = 5.0
    cfg.confirm_run_unsafe_code = True
    for key, value in changes.items():
        cfg[key] = value
    return cfg


def write_predictions(path, rows):
    path.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in rows))
    return str(path)


def test_canonical_solutions_pass_and_shifted_ones_fail(tmp_path):
    cfg = humaneval_config(limit=40)
    items = BENCHMARKS["humaneval"].load_items(cfg)
    canonical = [(item["id"], item["canonical_solution"]) for item in items]
    gold = run_benchmark("humaneval", cfg, str(tmp_path / "gold"),
                         predictions=write_predictions(tmp_path / "c.jsonl", canonical))
    assert gold["pass@1"] == 1.0 and gold["n_problems"] == 40
    shifted = [(item["id"], items[(i + 1) % len(items)]["canonical_solution"]) for i, item in enumerate(items)]
    other = run_benchmark("humaneval", cfg, str(tmp_path / "shifted"),
                          predictions=write_predictions(tmp_path / "s.jsonl", shifted))
    assert other["pass@1"] <= 0.05
    record = json.loads(open(tmp_path / "gold" / "humaneval_predictions.jsonl").readline())
    assert record["task_id"] == "HumanEval/0" and record["passed"] and record["status"] == "passed"


@pytest.mark.slow
def test_all_164_canonical_solutions_pass(tmp_path):
    cfg = humaneval_config()
    items = BENCHMARKS["humaneval"].load_items(cfg)
    metrics = run_benchmark("humaneval", cfg, str(tmp_path), predictions=write_predictions(
        tmp_path / "c.jsonl", [(item["id"], item["canonical_solution"]) for item in items]))
    assert metrics["pass@1"] == 1.0 and metrics["n_problems"] == 164


def test_pass_at_k_matches_the_closed_form(tmp_path):
    """12 samples each: problem 0 right once, problem 1 right 4 times."""
    cfg = humaneval_config(limit=2)
    items = BENCHMARKS["humaneval"].load_items(cfg)
    wrong = "    return None\n"
    rows = [(items[0]["id"], items[0]["canonical_solution"] if s == 0 else wrong) for s in range(12)]
    rows += [(items[1]["id"], items[1]["canonical_solution"] if s < 4 else wrong) for s in range(12)]
    metrics = run_benchmark("humaneval", cfg, str(tmp_path), predictions=write_predictions(tmp_path / "p.jsonl", rows))

    def pass_at(n, c, k):
        return 1 - comb(n - c, k) / comb(n, k)

    assert metrics["samples_per_problem"] == 12
    assert metrics["pass@1"] == pytest.approx((1 / 12 + 4 / 12) / 2)
    assert metrics["pass@10"] == pytest.approx((pass_at(12, 1, 10) + pass_at(12, 4, 10)) / 2)
    assert pass_at(12, 1, 10) == pytest.approx(1 - 11 / 66)


def test_a_hostile_completion_fails_without_stopping_the_run(tmp_path):
    cfg = humaneval_config(limit=2, timeout_s=2.0)
    items = BENCHMARKS["humaneval"].load_items(cfg)
    rows = [(items[0]["id"], "    import os\n    os.system('rm -rf ~')\n    while True:\n        pass\n"),
            (items[1]["id"], items[1]["canonical_solution"])]
    metrics = run_benchmark("humaneval", cfg, str(tmp_path), predictions=write_predictions(tmp_path / "p.jsonl", rows))
    assert metrics["pass@1"] == 0.5
    statuses = [json.loads(line)["status"] for line in open(tmp_path / "humaneval_predictions.jsonl")]
    assert statuses == ["timed out", "passed"]


def test_model_code_runs_only_after_an_explicit_opt_in(tmp_path):
    cfg = humaneval_config(limit=1, confirm_run_unsafe_code=False)
    with pytest.raises(ConfigError, match="eval.humaneval.confirm_run_unsafe_code=true"):
        run_benchmark("humaneval", cfg, str(tmp_path), predictions=write_predictions(tmp_path / "p.jsonl", []))
    assert not (tmp_path / "humaneval_predictions.jsonl").exists()


@pytest.mark.slow
def test_the_cli_refuses_without_the_opt_in_and_scores_with_it(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    item = BENCHMARKS["humaneval"].load_items(humaneval_config(limit=1))[0]
    predictions = write_predictions(tmp_path / "p.jsonl", [(item["id"], item["canonical_solution"])])
    command = [sys.executable, "eval/humaneval.py", "--predictions", predictions, "--output_dir", str(tmp_path / "out"),
               "--limit", "1"]
    refused = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode != 0 and not (tmp_path / "out" / "humaneval_predictions.jsonl").exists()
    last_line = refused.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: eval.humaneval.confirm_run_unsafe_code=true is required")
    scored = subprocess.run(command + ["--confirm_run_unsafe_code", "true"], cwd=ROOT, capture_output=True, text=True)
    assert scored.returncode == 0, scored.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "humaneval_results.json").read_text())
    assert results["metrics"]["pass@1"] == 1.0 and results["metrics"]["sandbox"] in ("namespaces", "user namespaces",
                                                                                      "limits only")
    assert results["metrics"]["sandbox_memory"] in ("cgroup v1", "cgroup v2", "rlimits only")


def test_several_greedy_samples_are_refused():
    with pytest.raises(ConfigError, match="temperature"):
        BENCHMARKS["humaneval"].decoding(humaneval_config(num_samples=10, temperature=0.0))


def test_stop_sequences_end_the_function_body():
    from lora_one.eval.generation import truncate_at_stop

    text = "    return x + 1\n\n\ndef helper():\n    pass\nif __name__ == '__main__':\n"
    assert truncate_at_stop(text, humaneval.STOP) == "    return x + 1\n\n"
