"""What produced a result: the code (git commit, uncommitted changes), the libraries, the machine and
the time span, recorded in results.json so a table can say where each number came from. Never
fails: whatever cannot be determined is None."""
import datetime
import importlib.metadata
import os
import platform
import socket
import subprocess

import torch

PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "hydra-core", "lora-one")
SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))


def git_state(directory: str = SOURCE_DIR) -> dict:
    """{"commit": HEAD's sha, "dirty": whether tracked files differ from it} of the checkout holding
    `directory`; both None outside a git checkout or without git."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", directory, *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def package_versions() -> dict:
    """Installed version of each package in PACKAGES, None where absent."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_name() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def device_info() -> dict:
    """CPU model, the GPUs' names (empty without CUDA) and torch's intra-op thread count."""
    try:
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except RuntimeError:  # a broken driver: say nothing rather than fail the run at its end
        gpus = None
    return {"cpu": cpu_name(), "gpus": gpus, "torch_threads": torch.get_num_threads()}


def iso_utc(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc).isoformat(timespec="seconds")


def provenance(start_time: float) -> dict:
    """The provenance block of results.json for a run that began at `start_time` (time.time()) and
    ends now."""
    end_time = datetime.datetime.now(datetime.timezone.utc).timestamp()
    return {"git": git_state(), "packages": package_versions(), "python": platform.python_version(),
            **device_info(), "hostname": socket.gethostname(), "start": iso_utc(start_time), "end": iso_utc(end_time)}
