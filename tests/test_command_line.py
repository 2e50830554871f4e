"""`python run_exp.py resume=<run dir>` is that run's own command line in its run dir; a damaged record of
it is one line; Hydra's answers (--help, --cfg job) come without importing the training stack."""
import os
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT
from lora_one.command_line import OTHER_RANKS, hydra_arguments, resume_command, resumed_run_dir


def test_resume_of_a_run_dir_is_that_runs_own_command_line_in_its_run_dir(tmp_path):
    run_dir = tmp_path / "sweep" / "0_seed=3,model.max_steps=2"  # a sweep's run dir: '=' and ',' in its name
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- model=tiny_llama\n- resume=auto\n- seed=3\n")
    command = resume_command(str(run_dir), str(ROOT / "run_exp.py"))
    args = shlex.split(command)[2:]
    assert args == [f'resume="{run_dir}"'] and resumed_run_dir(args) == str(run_dir)
    assert hydra_arguments(args + ["log_every=1", "--cfg", "job"], rank=0) == [  # overrides: one block (argparse)
        "model=tiny_llama", "seed=3", *args, "log_every=1", f'hydra.run.dir="{run_dir}"', "hydra.output_subdir=null",
        "--cfg", "job"]
    assert hydra_arguments(args + ["hydra.run.dir=elsewhere"], rank=0) == [
        "model=tiny_llama", "seed=3", *args, "hydra.run.dir=elsewhere"]  # continued in another run dir
    assert hydra_arguments(args, rank=1) == ["model=tiny_llama", "seed=3", *OTHER_RANKS, *args]  # no run dir of its own
    not_a_run = [f"resume={tmp_path}", "seed=1"]  # a checkpoint or a run dir without Hydra's record: as given
    assert hydra_arguments(not_a_run, rank=0) == not_a_run


@pytest.mark.parametrize("content,problem", [("- seed=3\n- [unclosed\n", r"cannot be read \(ParserError\)"),
                                             ("seed: 3\n", "is not a list of overrides")])
def test_resume_of_a_run_dir_with_a_damaged_record_is_one_line(tmp_path, content, problem):
    """.hydra/overrides.yaml is read back, so checked like data: refused before Hydra runs, never a traceback."""
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(content)
    with pytest.raises(SystemExit, match=rf"^error: resume={tmp_path}: {tmp_path / '.hydra' / 'overrides.yaml'} "
                                         rf"{problem}; relaunch with the run's overrides and hydra.run.dir= instead$"):
        hydra_arguments([f"resume={tmp_path}"], rank=0)


def python_run_exp(args: list[str]) -> subprocess.CompletedProcess:
    """run_exp.py as `python run_exp.py <args>` runs it; prints, last, whether torch was imported."""
    program = ("import runpy, sys\nsys.argv = ['run_exp.py', *sys.argv[1:]]\n"
               "try:\n    runpy.run_path('run_exp.py', run_name='__main__')\nexcept SystemExit as exit_:\n"
               "    assert exit_.code in (None, 0), exit_.code\nprint('torch imported:', 'torch' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-c", program, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_help_and_the_config_are_answered_without_importing_the_training_stack(tmp_path):
    helped = python_run_exp(["--help"])
    assert helped.returncode == 0 and "model" in helped.stdout, helped.stderr
    assert helped.stdout.splitlines()[-1] == "torch imported: False"
    run_dir = tmp_path / "run"  # resume=<run dir> shows that run's config
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- model=tiny_llama\n- seed=7\n")
    shown = python_run_exp(["--cfg", "job", f"resume={run_dir}"])
    assert shown.returncode == 0, shown.stderr
    assert "\nseed: 7\n" in shown.stdout and "  name: tiny_llama\n" in shown.stdout
    assert f"resume: {run_dir}\n" in shown.stdout
    assert shown.stdout.splitlines()[-1] == "torch imported: False"
    assert os.listdir(run_dir) == [".hydra"]  # nothing run, nothing written
