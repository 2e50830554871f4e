"""lora_one.provenance: the commit and dirty flag against repositories built here, versions against
the imported packages, times against a known timestamp; never fails outside a git checkout."""
import datetime
import json
import subprocess

import torch
import transformers

from conftest import ROOT
from lora_one.provenance import git_state, provenance


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


def test_commit_and_dirty_flag_of_a_repository(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git(tmp_path, "add", "code.py")
    git(tmp_path, "commit", "-q", "-m", "first")
    head = (tmp_path / ".git" / "refs" / "heads").iterdir().__next__().read_text().strip()
    assert git_state(str(tmp_path)) == {"commit": head, "dirty": False}
    (tmp_path / "notes.txt").write_text("untracked files do not make the checkout dirty")
    assert git_state(str(tmp_path))["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(str(tmp_path)) == {"commit": head, "dirty": True}


def test_no_checkout_and_no_git_give_none(tmp_path, monkeypatch):
    assert git_state(str(tmp_path)) == {"commit": None, "dirty": None}
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all
    assert git_state(str(ROOT)) == {"commit": None, "dirty": None}


def test_provenance_of_this_run():
    start = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc).timestamp()
    record = provenance(start)
    json.dumps(record)  # goes into results.json as is
    head = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%H"], capture_output=True,
                          text=True).stdout.strip()
    assert record["git"]["commit"] == head and isinstance(record["git"]["dirty"], bool)
    assert record["packages"]["torch"] == torch.__version__
    assert record["packages"]["transformers"] == transformers.__version__
    assert set(record["packages"]) == {"torch", "transformers", "peft", "accelerate", "datasets", "hydra-core",
                                       "lora-one"}
    assert record["torch_threads"] == torch.get_num_threads() and record["cpu"]
    assert record["start"] == "2026-01-02T03:04:05+00:00"
    end = datetime.datetime.fromisoformat(record["end"])
    assert end.tzinfo is not None and end > datetime.datetime.fromisoformat(record["start"])
