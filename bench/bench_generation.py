"""Batched vs one-prompt-at-a-time greedy GSM8K generation on SmolLM2-135M, in one run.

    python bench/bench_generation.py [--questions 16] [--batch_size 16] [--max_new_tokens 64]

Both passes generate the same greedy completions for the first GSM8K test questions with the
evaluators' own `generate` (left padding, KV cache); the ratio of their wall times is the speed-up.
"""
import argparse
import os
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from accelerate import Accelerator
from omegaconf import OmegaConf

from lora_one.config import compose_config
from lora_one.eval import BENCHMARKS, gsm8k
from lora_one.eval.generation import Decoding, generate
from lora_one.models import load_model, load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    args = parser.parse_args()
    cfg = compose_config(["model=smollm2_135m", "eval=gsm8k"])
    task = OmegaConf.merge(cfg.eval.gsm8k, {"limit": args.questions})
    accelerator = Accelerator(cpu=True)
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    model = load_model(cfg.model, tokenizer, cfg.cache_dir)
    prompts = [item["prompt"] for item in BENCHMARKS["gsm8k"].load_items(task)]
    decoding = Decoding(max_new_tokens=args.max_new_tokens, stop=gsm8k.STOP)

    seconds, outputs = {}, {}
    for name, batch_size in (("one at a time", 1), (f"batched ({args.batch_size})", args.batch_size)):
        start = time.perf_counter()
        outputs[name] = generate(model, tokenizer, prompts, decoding, batch_size, accelerator, desc=name)
        seconds[name] = time.perf_counter() - start
    single, batched = seconds.values()
    same = sum(a == b for a, b in zip(*outputs.values()))
    for name, s in seconds.items():
        print(f"{name:>16}: {s:7.1f} s for {len(prompts)} questions × ≤{args.max_new_tokens} new tokens")
    print(f"identical completions: {same}/{len(prompts)}")
    print(f"speed-up batched / one at a time: {single / batched:.2f}x")


if __name__ == "__main__":
    main()
