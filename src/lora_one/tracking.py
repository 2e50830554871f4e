"""wandb glue: the main process logs the config, the init's statistics, the training curves and the final
metrics. `wandb.mode` offline (the default) needs no network; a wandb failure is logged once, turns
tracking off and never stops training."""
import functools
import hashlib
import logging
import math
import os
import statistics

from omegaconf import DictConfig, OmegaConf

from lora_one import ConfigError

log = logging.getLogger(__name__)

MODES = ("online", "offline", "disabled")
SKIPPED_IN_SUMMARY = ("config", "init_layers", "train_loss_curve", "lr_curve", "grad_norm_curve")


def check_tracking_config(wandb_cfg: DictConfig) -> None:
    if wandb_cfg.mode not in MODES:
        raise ConfigError(f"wandb.mode '{wandb_cfg.mode}' is unknown; use one of {MODES}")


def sweep_group(task_overrides: list[str]) -> str:
    """The run's Hydra overrides but the seed and the bookkeeping (launcher, wandb, resume, checkpoint
    settings): runs that differ only by seed share it, so the dashboard groups them."""
    def bookkeeping(override: str) -> bool:
        key = override.split("=", 1)[0].lstrip("+~")
        return key in ("seed", "resume") or key.startswith(("hydra", "wandb.", "checkpoint."))

    return ",".join(sorted(o for o in task_overrides if not bookkeeping(o))) or "default"


def init_summary(layer_stats: dict[str, dict], seconds: float, peak_mem_mb: float) -> dict:
    """Init cost, and min/median/max over layers of each per-layer spectral statistic
    (σ₁, σ_r/σ₁, share of ‖G‖²_F in the top r directions)."""
    summary = {"init/time_s": seconds, "init/peak_mem_mb": peak_mem_mb}
    for stat in sorted({s for stats in layer_stats.values() for s in stats}):
        values = [stats[stat] for stats in layer_stats.values()]
        summary.update({f"init/{stat}_min": min(values), f"init/{stat}_median": statistics.median(values),
                        f"init/{stat}_max": max(values)})
    return summary


def final_metrics(results: dict, prefix: str = "") -> dict:
    """Every number of results.json but the config and the curves, nested keys joined by '/'."""
    flat = {}
    for key, value in results.items():
        if not prefix and key in SKIPPED_IN_SUMMARY:
            continue
        if isinstance(value, dict):
            flat.update(final_metrics(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[f"{prefix}{key}"] = value
    return flat


def guarded(method):
    """Run a wandb call; on any error log it, stop tracking and carry on."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if self.run is None:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking must never end a training run
            log.warning("wandb %s failed (%s: %s); tracking is off for this run", method.__name__,
                        type(err).__name__, err)
            self.run = None
    return call


def run_location(wandb_cfg: DictConfig, run_id: str, out_dir: str) -> str:
    """Where the run's data goes, in one line (wandb's own banner and summary are ~27)."""
    if wandb_cfg.mode == "offline":
        return f"offline run {run_id} in {out_dir}/wandb (upload it with `wandb sync {out_dir}/wandb/offline-run-*`)"
    return f"online run {run_id} in project {wandb_cfg.project}"


class Tracker:
    """A wandb run, or nothing (`wandb.mode=disabled`, or not the main process). `group`: runs that
    differ only by seed (from `sweep_group`); the run id follows the run directory, so a resumed run
    continues its wandb run (online). wandb prints nothing but errors unless `verbose`: one line of
    ours says where the run's data goes."""

    def __init__(self, cfg: DictConfig, out_dir: str, is_main_process: bool, group: str | None = None):
        self.run = None
        if not is_main_process or cfg.wandb.mode == "disabled":
            return
        run_id = hashlib.sha1(os.path.abspath(out_dir).encode()).hexdigest()[:16]
        try:
            import wandb

            self.run = wandb.init(
                mode=cfg.wandb.mode, project=cfg.wandb.project, entity=cfg.wandb.entity,
                group=group, name=f"{group},seed={cfg.seed}" if group else None,
                id=run_id, resume="allow", dir=out_dir, config=OmegaConf.to_container(cfg, resolve=True),
                settings=wandb.Settings(init_timeout=cfg.wandb.init_timeout_s, console="off", silent=not cfg.verbose),
            )
        except Exception as err:  # noqa: BLE001 - no network, no login: train anyway
            log.warning("wandb init failed (%s: %s); training without tracking", type(err).__name__, err)
            return
        if not cfg.verbose:
            log.info("wandb: %s", run_location(cfg.wandb, run_id, out_dir))

    @guarded
    def log_init(self, layer_stats: dict[str, dict], seconds: float, peak_mem_mb: float) -> None:
        import wandb

        self.run.summary.update(init_summary(layer_stats, seconds, peak_mem_mb))
        if layer_stats:
            columns = sorted(next(iter(layer_stats.values())))
            table = wandb.Table(columns=["layer", *columns],
                                data=[[name, *(stats[c] for c in columns)] for name, stats in layer_stats.items()])
            self.run.log({"init/layers": table}, step=0)

    @guarded
    def log(self, metrics: dict, step: int) -> None:
        self.run.log({k: v for k, v in metrics.items() if v is not None}, step=step)

    @guarded
    def finish(self, results: dict | None = None) -> None:
        if results is not None:
            self.run.summary.update(final_metrics(results))
        self.run.finish()
        self.run = None
