"""Where the project lives: its conf/, and the directory holding it, the root that conf/paths derives every
other location from (`${lora_one.root:}`), so that no setting depends on the directory a command is launched
from. Importing this module registers the resolver; Hydra imports it whenever it starts (hydra_plugins/)."""
import os
from pathlib import Path

from omegaconf import OmegaConf

from lora_one import ConfigError

ROOT_RESOLVER = "lora_one.root"


def conf_dir() -> Path:
    """The project's conf/: `$LORA_ONE_CONF`, else the one of this checkout (beside src/)."""
    path = Path(os.environ.get("LORA_ONE_CONF") or Path(__file__).resolve().parents[2] / "conf")
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"no Hydra config at {path}/config.yaml: set LORA_ONE_CONF to the project's conf/ directory")
    return path


def project_root() -> str:
    """The directory that holds conf/ (the checkout)."""
    return str(conf_dir().resolve().parent)


OmegaConf.register_new_resolver(ROOT_RESOLVER, project_root, replace=True)
