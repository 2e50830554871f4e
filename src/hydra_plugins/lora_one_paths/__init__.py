"""Hydra imports every module under `hydra_plugins` when it starts, in an app (run_exp.py, even for --cfg and
--help), in the compose API and in each job of a launcher: importing lora_one.project here registers
`${lora_one.root:}`, which conf/paths/default.yaml resolves, wherever Hydra composes the run config."""
import lora_one.project  # noqa: F401  (registers the resolver)
