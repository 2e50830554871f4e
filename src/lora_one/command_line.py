"""run_exp.py's command line before Hydra parses it. What needs none of the training stack is settled before
run_exp.py imports torch, transformers and accelerate (~10 s): Hydra's own answers (--help, --cfg job, --info),
the other ranks' arguments, and `resume=<run dir>`, which continues a run with its own config, in its own
run dir. Also the command line that continues a stopped run, which a stop prints."""
import os
import re
import shlex

from hydra._internal.utils import get_args_parser  # the parser hydra.main uses: the same overrides
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

PLAIN_VALUE = re.compile(r"[\w./:@%+-]+")  # a value Hydra's override grammar takes unquoted
RUN_RECORD = ".hydra"  # what Hydra writes into a run dir: config.yaml, overrides.yaml, hydra.yaml
# torchrun / accelerate launch: only rank 0 writes the run dir and logs (the others learn its path)
OTHER_RANKS = ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled",
               "hydra/hydra_logging=disabled"]


def answered_by_hydra(args: list[str]) -> bool:
    """Whether Hydra answers this command line itself (help, the config, info) without running the job."""
    flags = get_args_parser().parse_args(args)
    return flags.help or flags.hydra_help or flags.cfg is not None or flags.info is not None or flags.shell_completion


def hydra_value(path: str) -> str:
    """`path` as the value of an override: quoted where Hydra would read more into it (a sweep's
    `0_seed=1,lr=2` run dir holds '=' and ',')."""
    return path if PLAIN_VALUE.fullmatch(path) else f'"{path}"'


def hydra_arguments(args: list[str], rank: int) -> list[str]:
    """The arguments Hydra parses: the other ranks' own overrides (OTHER_RANKS) first, `resume=<run dir>`
    expanded (`resume_overrides`). The overrides stay one block among the flags, as argparse needs them."""
    overrides = get_args_parser().parse_args(args).overrides
    start = next(i for i in range(len(args)) if args[i:i + len(overrides)] == overrides) if overrides else 0
    rewritten = resume_overrides([*OTHER_RANKS, *overrides] if rank > 0 else overrides)
    return [*args[:start], *rewritten, *args[start + len(overrides):]]


def resumed_run_dir(overrides: list[str]) -> str | None:
    """The run dir that `resume=` names when Hydra wrote it (it has .hydra/overrides.yaml), else None."""
    for override in overrides:
        if override.startswith("resume="):
            try:
                path = str(OverridesParser.create().parse_override(override).value())
            except HydraException:  # not an override: Hydra says what is wrong with it
                return None
            return path if os.path.isfile(os.path.join(path, RUN_RECORD, "overrides.yaml")) else None
    return None


def resume_overrides(overrides: list[str]) -> list[str]:
    """`resume=<run dir>` continues that run as it was launched: its own overrides (.hydra/overrides.yaml),
    then the ones given (a resume refuses those that change the training), in its run dir, where Hydra
    then leaves the run's record (.hydra/) as it was; `hydra.run.dir=` given: there instead.
    Any other overrides are returned unchanged."""
    run_dir = resumed_run_dir(overrides)
    if run_dir is None:
        return overrides
    launched = [override for override in launched_overrides(run_dir) if not override.startswith("resume=")]
    if any(override.startswith("hydra.run.dir=") for override in overrides):
        return [*launched, *overrides]
    return [*launched, *overrides, f"hydra.run.dir={hydra_value(run_dir)}", "hydra.output_subdir=null"]


def launched_overrides(run_dir: str) -> list[str]:
    """The overrides `run_dir`'s run was launched with (.hydra/overrides.yaml, read back: checked like data)."""
    path = os.path.join(run_dir, RUN_RECORD, "overrides.yaml")
    try:
        launched = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:  # noqa: BLE001 - yaml's and omegaconf's parse errors share no base class
        raise SystemExit(f"error: resume={run_dir}: {path} cannot be read ({type(err).__name__}); "
                         "relaunch with the run's overrides and hydra.run.dir= instead") from None
    if not (isinstance(launched, list) and all(isinstance(override, str) for override in launched)):
        raise SystemExit(f"error: resume={run_dir}: {path} is not a list of overrides; "
                         "relaunch with the run's overrides and hydra.run.dir= instead")
    return launched


def shown(path: str) -> str:
    """`path` relative to the working directory when it lies under it, else absolute."""
    relative = os.path.relpath(path)
    return os.path.abspath(path) if relative.startswith("..") else relative


def resume_command(run_dir: str, script: str) -> str:
    """The command line that continues the run in `run_dir` (paths relative to here when under it):
    `python run_exp.py resume=<run dir>`; for a multi-process run, with its launcher."""
    command = f"{shlex.quote(shown(script))} {shlex.quote(f'resume={hydra_value(shown(run_dir))}')}"
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1:
        return f"<the same launcher, {processes} processes> {command}"
    return f"python {command}"
