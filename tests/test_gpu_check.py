"""bench/gpu_check.py on the CPU with its tiny config: the one command writes every section's figures to JSON and
markdown, and a spent time budget skips sections with a note (the Llama-2-7B run on a GPU: bench/README.md)."""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SECTIONS = ["init", "train", "optim", "generate", "init_full"]


def test_every_section_reports_its_figures(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--config", "tiny", "--device", "cpu",
                           "--repeats", "2", "--steps", "2", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["settings"]["device"] == "cpu" and report["settings"]["memory"].startswith("n/a (CPU)")
    assert list(report["sections"]) == SECTIONS
    for name, section in report["sections"].items():
        assert "skipped" not in section, (name, section)
        assert section["rows"] and all(len(row) == len(section["columns"]) for row in section["rows"])
        for row in section["rows"]:
            for value, column in zip(row, section["columns"]):
                if value is None:  # memory is measured on CUDA only
                    assert "MiB" in column or "peak" in column, (name, column)
                elif not isinstance(value, str):
                    assert value > 0, (name, column, value)
        assert all(value > 0 for value in section["summary"].values() if isinstance(value, float)), section["summary"]
    sections = report["sections"]
    assert [row[0] for row in sections["init"]["rows"]] == ["one LoRA step (run_exp's loop, AdamW)",
                                                            "streaming init, svd=lowrank (q = 4r, niter = 4)"]
    assert sections["init_full"]["rows"][1][0] == "streaming init, svd=full"
    assert sections["init_full"]["rows"][0] == sections["init"]["rows"][0]  # one LoRA step, measured once
    assert set(sections["init_full"]["summary"]["full_svd_seconds_per_shape"]) == {"32x64", "64x64", "64x128",
                                                                                   "128x64"}
    assert [row[0] for row in sections["train"]["rows"]] == ["off", "on"]
    assert [row[0] for row in sections["optim"]["rows"]] == ["adamw", "scaled_adamw", "lora_pro"]
    assert sections["generate"]["rows"][0][3] > 0  # tokens decoded

    markdown = (tmp_path / "gpu_check.md").read_text()
    assert markdown in done.stdout
    for name, section in sections.items():
        table = ["| " + " | ".join(section["columns"]) + " |", "|" + " --- |" * len(section["columns"])]
        at = markdown.index(f"## {name} (")
        assert markdown[markdown.index("\n\n", at) + 2:].startswith("\n".join(table) + "\n| "), name
    assert "| n/a (CPU) |" in markdown and "| adamw | " in markdown


def test_sections_past_the_time_budget_are_skipped_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what the script sets, undone after the test
    monkeypatch.syspath_prepend(str(BENCH))  # as `python bench/gpu_check.py` has it: `common`, `bench_optimizers`
    gpu_check = importlib.import_module("gpu_check")
    gpu_check.main(["--config", "tiny", "--device", "cpu", "--time-budget-s", "0", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["sections"] == {name: {"skipped": "the time budget of 0 s was spent before it started"}
                                  for name in SECTIONS}
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert markdown.count("Skipped: the time budget of 0 s was spent before it started.") == len(SECTIONS)
