"""The names of a sweep's run dirs: lists, paths and deletions flattened to what a shell need not quote."""
from omegaconf import ListConfig

from conftest import compose_config
from lora_one.sweep_dirs import sweep_dirname


def test_sweep_dir_names_flatten_lists_paths_and_deletions():
    settings = compose_config([], return_hydra_config=True).hydra.job.config.override_dirname
    overrides = ListConfig(["eval=[gsm8k,humaneval]", "dataset.path='../data/my file.jsonl'", "~init.bsz",
                            "hydra/launcher=local", "model.learning_rate=1e-3"])
    assert sweep_dirname(overrides, settings) == ("dataset.path-..-data-my-file.jsonl_eval-gsm8k-humaneval_"
                                                  "init.bsz-deleted_model.learning_rate-1e-3")
