"""GLUE label scoring against its floor, side by side in one run: MRPC dev on SmolLM2-135M.

    OMP_NUM_THREADS=1 python bench/glue_scoring.py [--rows 96] [--batch-size 16] [--rounds 2]

- floor: one forward per prompt (left-padded, sorted by length and batched as the scorer batches),
  the vocabulary head only at the last prompt position: the least any scorer that reads the prompt costs;
- per label: each (prompt, label word) its own training row, the head at every position (how GLUE was
  scored before; the reference of tests/eval/test_eval_glue.py, batched by map_batches as the scorer was);
- shared prompt: `glue.label_log_probs`, each prompt read once and every label continued from its KV cache.

Rounds run the three in turn; each method's best round counts. Also printed: whether the two scorers
predict the same labels, and their largest log-likelihood difference."""
import argparse
import sys
import time

from common import ROOT, report

sys.path[:0] = [str(ROOT / "tests" / "eval"), str(ROOT / "tests")]  # the reference scorer, and the conftest it imports

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from test_eval_glue import per_label_log_probs  # noqa: E402  (the reference scorer, kept in the test only)

from lora_one.config import compose_config  # noqa: E402
from lora_one.eval import BENCHMARKS, glue  # noqa: E402
from lora_one.eval.generation import map_batches, prompt_lengths  # noqa: E402
from lora_one.models import load_model, load_tokenizer  # noqa: E402

MRPC = ROOT.parent / "shared" / "data" / "glue" / "MRPC"


@torch.no_grad()
def floor(model, tokenizer, prompts: list[str], words: list[str], batch_size: int, accelerator) -> list:
    def run_batch(number: int, indices: list[int]) -> list:
        batch = tokenizer([prompts[i] for i in indices], padding=True, padding_side="left", return_tensors="pt")
        model(**batch, use_cache=False, logits_to_keep=1)
        return [None] * len(indices)

    return map_batches(run_batch, prompt_lengths(tokenizer, prompts), batch_size, accelerator, desc="floor")


def per_label(model, tokenizer, prompts: list[str], words: list[str], batch_size: int, accelerator) -> list:
    def run_batch(number: int, indices: list[int]) -> list:
        return per_label_log_probs(model, tokenizer, [prompts[i] for i in indices], words)

    return map_batches(run_batch, prompt_lengths(tokenizer, prompts), batch_size, accelerator, desc="per label")


METHODS = {"floor": floor, "per label": per_label, "shared prompt": glue.label_log_probs}


def predictions(scores: list, words: list[str]) -> list[str]:
    return [max(words, key=lambda w: sum(per_label[words.index(w)])) for per_label in scores]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=96, help="the first MRPC dev rows")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per batch (eval.glue.batch_size)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cfg = compose_config(["model=smollm2_135m", "dataset=mrpc", f"dataset.path={MRPC}", "eval=glue",
                          f"eval.glue.limit={args.rows}"])
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    model = load_model(cfg.model, tokenizer, cfg.cache_dir).eval()
    prompts = [item["prompt"] for item in BENCHMARKS["glue"].load_items(cfg.eval.glue)]
    words = list(cfg.dataset.label_names)
    accelerator = Accelerator(cpu=True)
    seconds, scores = {name: [] for name in METHODS}, {}
    for _ in range(args.rounds):
        for name, method in METHODS.items():
            start = time.perf_counter()
            scores[name] = method(model, tokenizer, prompts, words, args.batch_size, accelerator)
            seconds[name].append(time.perf_counter() - start)
    best = {name: min(times) for name, times in seconds.items()}
    rows = [[name, best[name], len(prompts) / best[name], best[name] / best["floor"], seconds[name]]
            for name in METHODS]
    old, new = scores["per label"], scores["shared prompt"]
    largest = max(abs(sum(a) - sum(b)) for p, q in zip(old, new) for a, b in zip(p, q))
    summary = {"rows": len(prompts), "batch_size": args.batch_size, "threads": torch.get_num_threads(),
               "same predictions": f"{sum(a == b for a, b in zip(predictions(old, words), predictions(new, words)))}"
                                   f"/{len(prompts)}",
               "max |log-likelihood difference|": largest}
    report("glue_scoring", ["method", "best s", "rows/s", "× floor", "all rounds s"], rows, summary)


if __name__ == "__main__":
    main()
