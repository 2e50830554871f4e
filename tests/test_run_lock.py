"""The run dir is locked: a live holder's lock refuses a second run, a stale one is taken over, the lock
names its holder and is released on error; another host's lock is refused, the same slurm job's taken over."""
import json
import os
import socket

import pytest

from conftest import QUICK, assert_error, dead_pid, run_cli, write_lock
from lora_one.run_lock import LOCK_FILE, RunDirLock
from lora_one.storage import RunDirError


def test_cli_refuses_a_run_dir_in_use(tmp_path):
    write_lock(tmp_path, pid=os.getpid())  # this test process: alive, on this host
    proc = run_cli(QUICK, tmp_path)
    assert_error(proc, rf"^error: run dir {tmp_path} is in use by pid {os.getpid()} on {socket.gethostname()} since "
                       rf"\S+ \S+ \({tmp_path / LOCK_FILE}\); use another hydra.run.dir, or delete the lock file")
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_cli_takes_over_a_stale_lock_and_releases_it(tmp_path):
    write_lock(tmp_path, pid=dead_pid())
    proc = run_cli(QUICK + ["++init.direction=LoRA-GA"], tmp_path)  # a ++ key the groups define still works
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "results.json").read_text())["config"]["init"]["direction"] == "LoRA-GA"
    assert not (tmp_path / LOCK_FILE).exists()


def test_lock_holds_pid_and_host_and_is_released_on_error(tmp_path):
    with pytest.raises(KeyError):
        with RunDirLock(str(tmp_path)):
            owner = json.loads((tmp_path / LOCK_FILE).read_text())
            assert (owner["pid"], owner["host"]) == (os.getpid(), socket.gethostname())
            with pytest.raises(RunDirError, match=f"in use by pid {os.getpid()}"):
                RunDirLock(str(tmp_path)).__enter__()  # a second holder, even in this process
            raise KeyError("the run failed")
    assert not (tmp_path / LOCK_FILE).exists()


def test_lock_of_another_host_is_refused_and_of_the_same_slurm_job_taken_over(tmp_path, monkeypatch):
    write_lock(tmp_path, pid=dead_pid(), host="some-other-node", slurm_job="77_3")
    with pytest.raises(RunDirError, match="in use by pid .* on some-other-node"):
        RunDirLock(str(tmp_path)).__enter__()
    monkeypatch.setenv("SLURM_JOB_ID", "78")  # a requeued array task: new job id, same array job and task
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    with RunDirLock(str(tmp_path)):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
