"""The title claim, "one step of full gradient could suffice", measured: the held-out loss after one
step W − η·G of the full gradient on every target weight, after its best rank-r truncations, and after
one plain gradient step on (B, A) from the LoRA-GA and LoRA-One inits (src/lora_one/reproduce/one_step.py).

    python scripts/one_step.py [--out docs/reproduction] [--ranks 4 8 16 32] [--eta-grid 0.01 1 5]
                               [--lr-grid 0.01 1 5] [overrides…]

Overrides are Hydra overrides of the run config, after the default setting (one_step.DEFAULT_OVERRIDES:
SmolLM2-135M, q/v adapters, SST-2, G from 16 training rows, 32 held-out rows). The default grids bracket
the minima measured in that setting (η, λ ≈ 0.1); a curve whose minimum lies on an end is extended past
it. Writes OUT/one_step.json and OUT/one_step.png, and prints the markdown section they make."""
import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LORA_ONE_CONF", str(ROOT / "conf"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from lora_one import ConfigError  # noqa: E402
from lora_one.config import compose_config, validate_config  # noqa: E402
from lora_one.reproduce.one_step import (
    ADAPTER_INITS,
    DEFAULT_OVERRIDES,
    one_step_markdown,
    plot_one_step,
    run_one_step,  # noqa: E402
)


def log_grid(text_values: list[str]) -> list[float]:
    low, high, points = float(text_values[0]), float(text_values[1]), int(text_values[2])
    if not 0 < low < high or points < 2:
        raise argparse.ArgumentTypeError(f"a grid is MIN MAX POINTS, 0 < MIN < MAX, POINTS ≥ 2 (got {text_values})")
    return np.geomspace(low, high, points).tolist()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reproduction")
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--eta-grid", nargs=3, default=["0.01", "1", "5"], metavar=("MIN", "MAX", "POINTS"),
                        help="log-spaced η of the weight steps W − η·G, W − η·[G]_r")
    parser.add_argument("--lr-grid", nargs=3, default=["0.01", "1", "5"], metavar=("MIN", "MAX", "POINTS"),
                        help="log-spaced learning rates λ of the GD step on (B, A)")
    parser.add_argument("--adapter-inits", nargs="*", default=list(ADAPTER_INITS), choices=ADAPTER_INITS)
    parser.add_argument("--extensions", type=int, default=2,
                        help="at most this many points past a grid end where a curve's minimum lies (default 2)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, after the default setting")
    args = parser.parse_args(argv)
    try:
        args.eta_grid, args.lr_grid = log_grid(args.eta_grid), log_grid(args.lr_grid)
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.time()
    try:
        cfg = compose_config([*DEFAULT_OVERRIDES, *args.overrides])
        validate_config(cfg)
        results = run_one_step(cfg, args.ranks, args.eta_grid, args.lr_grid, args.adapter_inits, args.extensions,
                               progress=lambda line: print(line, flush=True))
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    results["command"] = " ".join(["python scripts/one_step.py", *(argv if argv is not None else sys.argv[1:])])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "one_step.json").write_text(json.dumps(results, indent=1) + "\n")
    plot_one_step(results, args.out / "one_step.png")
    print(one_step_markdown(results, "one_step.png"))
    print(f"wrote {args.out / 'one_step.json'} and {args.out / 'one_step.png'} in {time.time() - start:.0f} s",
          flush=True)


if __name__ == "__main__":
    main()
