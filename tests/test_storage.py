"""A run's writes: results.json is strict JSON (null for non-finite numbers), written whole or not at all;
a run dir that cannot be written, a full disk, a file that cannot be replaced are one line naming the path
and the cause."""
import errno
import json
import os
import subprocess

import pytest

from conftest import QUICK, assert_error, run_cli, run_experiment, save_checkpoints, toy_trainer
from lora_one.storage import RunDirError, storage_failure, write_json


def test_results_json_is_strict_json_with_null_for_non_finite(tmp_path):
    path = tmp_path / "results.json"
    write_json(str(path), {"eval_loss": float("nan"), "curve": [1.5, float("inf"), -float("inf")], "n": 3})

    def refuse(constant):
        raise AssertionError(f"bare {constant} in results.json")

    written = json.loads(path.read_text(), parse_constant=refuse)
    assert written == {"eval_loss": None, "curve": [1.5, None, None], "n": 3}
    assert not (tmp_path / "results.json.tmp").exists()


def test_cli_names_an_unwritable_run_dir(tmp_path):
    (tmp_path / "a_file").write_text("")
    proc = run_cli(QUICK, tmp_path / "a_file" / "run")
    assert_error(proc, rf"^error: cannot write {tmp_path / 'a_file' / 'run'}: not a directory \(ENOTDIR\)$")


def small_tmpfs(path, size: str) -> None:
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode:
        pytest.skip("needs root and mount (a tiny tmpfs)")


@pytest.fixture
def tiny_disk(tmp_path):
    disk = tmp_path / "disk"
    small_tmpfs(disk, "256k")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_cli_says_a_full_disk_before_hydra_writes(tiny_disk):
    filler = os.open(tiny_disk / "filler", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(OSError) as full:
        while True:
            os.write(filler, b"\0" * 4096)
    os.close(filler)
    assert full.value.errno == errno.ENOSPC
    proc = run_cli(QUICK, tiny_disk / "run")
    assert_error(proc, rf"^error: cannot write {tiny_disk / 'run'}: disk full \(ENOSPC: no space left on device\)$")


@pytest.mark.slow
def test_cli_says_a_disk_that_fills_during_the_run(tiny_disk):
    """256 KiB hold Hydra's files but not the first checkpoint (adapter + AdamW moments, ~200 KiB) next
    to a 96 KiB ballast: the checkpoint's write fails mid-run."""
    (tiny_disk / "ballast").write_bytes(b"\0" * 96 * 1024)
    proc = run_cli(QUICK + ["checkpoint.every_n_steps=1"], tiny_disk / "run")
    assert_error(proc, rf"^error: cannot write {tiny_disk / 'run' / 'checkpoints' / 'step_1'}: disk full "
                       r"\(ENOSPC: no space left on device\)$", mid_run=True)
    assert not (tiny_disk / "run" / "checkpoints" / "step_1").exists()  # no partial checkpoint


def test_storage_errors_are_named_with_the_cause(tmp_path, monkeypatch):
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "results.json"))
    assert storage_failure(full, str(tmp_path)) == (f"{tmp_path / 'results.json'}: disk full "
                                                    "(ENOSPC: no space left on device)")
    read_only = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "adapter"))
    assert storage_failure(read_only, str(tmp_path)) == f"{tmp_path / 'adapter'}: read-only file system (EROFS)"
    # as safetensors raises it
    lost_errno = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert storage_failure(lost_errno, str(tmp_path)) == (f"a write under {tmp_path} failed: disk full "
                                                          "(ENOSPC: no space left on device)")
    assert storage_failure(RuntimeError("shapes do not match"), str(tmp_path)) is None  # not about the disk
    assert storage_failure(FileNotFoundError(errno.ENOENT, "No such file", "x"), str(tmp_path)) is None

    import lora_one.train.checkpointing

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lora_one.train.checkpointing, "save_file", no_space)
    with pytest.raises(RunDirError, match=rf"^cannot write {tmp_path}/checkpoints/step_1: disk full \(ENOSPC"):
        save_checkpoints(tmp_path, *toy_trainer(), steps=[1])


def test_results_json_that_cannot_be_replaced_is_named_and_no_temporary_is_left(tmp_path, monkeypatch):
    def refuse(source, target):
        raise PermissionError(errno.EPERM, "Operation not permitted", source)  # the temporary file is named

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(RunDirError,
                       match=rf"^cannot write {tmp_path}/results.json: operation not permitted \(EPERM\)$"):
        write_json(str(tmp_path / "results.json"), {"eval_loss": 1.0})
    assert os.listdir(tmp_path) == []


@pytest.fixture
def immutable(tmp_path):
    """Files made immutable (chattr +i, which binds root too), made mutable again afterwards."""
    made = []

    def make(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here")
        made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def test_an_adapter_file_that_cannot_be_written_is_one_line(tmp_path, immutable):
    immutable(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    with pytest.raises(RunDirError, match=r"cannot write .*run/adapter: operation not permitted \(EPERM\)"):
        run_experiment(QUICK + ["wandb.mode=disabled"], tmp_path / "run")
