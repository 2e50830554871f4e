"""The LoRA-One paper's linear-model experiments in one command, seconds on CPU.

    python scripts/theory.py --out DIR [--seed 0]

Writes DIR/theory.json (schema in README.md, "The mechanism on a toy"), DIR/theory_random_init.png,
DIR/theory_spectral.png, DIR/theory_phase_portrait.png, and prints a short summary. The math lives in
src/lora_one/theory/.
"""
import argparse
import json
import os
from pathlib import Path

# The matrices are 100×100: BLAS threads only contend for the cores (10× slower on a busy machine).
for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

from lora_one.theory import plot_all, run_theory, summary  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output directory (created)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the task, the inits and the data")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = run_theory(args.seed)
    (args.out / "theory.json").write_text(json.dumps(results))
    figures = plot_all(results, args.out)
    print(summary(results))
    print(f"wrote {args.out / 'theory.json'}, " + ", ".join(str(f) for f in figures))


if __name__ == "__main__":
    main()
