"""Batched work over prompts for the evaluators: generation (left padding, KV cache, stop strings)
and any other per-batch model call, split across Accelerate processes.

The prompts are sorted by length and cut into batches once; process p takes batches p, p+P, ...
So every batch holds the same prompts, with the same padding, whatever the number of processes,
and the gathered results are those of one process."""
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import GenerationConfig

from lora_one.eval.scoring import is_encoder_decoder


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy (or beam search with num_beams > 1)
    top_p: float = 1.0
    num_beams: int = 1
    num_samples: int = 1  # completions per prompt
    stop: tuple[str, ...] = ()  # the completion is cut before the first of these
    seed: int = 0  # sampling: batch b draws from seed + b, so any process count samples alike

    def generation_config(self, tokenizer) -> GenerationConfig:
        sampling = self.temperature > 0
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens, do_sample=sampling,
            temperature=self.temperature if sampling else None, top_p=self.top_p if sampling else None,
            num_beams=self.num_beams, num_return_sequences=self.num_samples,
            stop_strings=list(self.stop) or None,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by decreasing length (ties in order), cut into batches: little padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def map_batches(run_batch: Callable[[int, list[int]], list], lengths: Sequence[int], batch_size: int,
                accelerator: Accelerator, desc: str, on_batch: Callable[[list[int], list], str] | None = None) -> list:
    """`run_batch(batch_number, indices)` → one result per index, over this process's batches;
    gathered from all processes and returned in the original order on every process.
    `on_batch(indices, results)` returns a progress-bar note (e.g. the running accuracy)."""
    batches = plan_batches(lengths, batch_size)
    mine = list(range(accelerator.process_index, len(batches), accelerator.num_processes))
    progress = tqdm(total=sum(len(batches[b]) for b in mine), desc=desc, disable=not accelerator.is_main_process)
    pairs = []
    for number in mine:
        indices = batches[number]
        results = run_batch(number, indices)
        pairs.extend(zip(indices, results))
        progress.update(len(indices))
        if on_batch is not None:
            progress.set_postfix_str(on_batch(indices, results))
    progress.close()
    if accelerator.num_processes > 1:
        pairs = gather_object(pairs)
    ordered = [None] * len(lengths)
    for index, result in pairs:
        ordered[index] = result
    return ordered


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = min((text.find(s) for s in stop if s in text), default=len(text))
    return text[:cut]


def prompt_lengths(tokenizer, prompts: Sequence[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(list(prompts))["input_ids"]]


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], decoding: Decoding, batch_size: int, accelerator: Accelerator,
             desc: str = "generate", on_batch: Callable[[list[int], list], str] | None = None) -> list[list[str]]:
    """`decoding.num_samples` completions for each prompt (prompts tokenized exactly as in training,
    left-padded so every row's next token sits at the end; an encoder-decoder model's encoder masks
    the padding and its decoder starts fresh)."""
    was_training = model.training
    model.eval()
    config = decoding.generation_config(tokenizer)

    def run_batch(number: int, indices: list[int]) -> list[list[str]]:
        batch = tokenizer([prompts[i] for i in indices], padding=True, padding_side="left", return_tensors="pt")
        batch = batch.to(accelerator.device)
        if decoding.temperature > 0:
            torch.manual_seed(decoding.seed + number)
        output = model.generate(**batch, generation_config=config, tokenizer=tokenizer)
        # a causal model returns prompt + completion; an encoder-decoder model only the decoder's text
        completion = output if is_encoder_decoder(model) else output[:, batch["input_ids"].shape[1]:]
        texts = tokenizer.batch_decode(completion, skip_special_tokens=True)
        texts = [truncate_at_stop(t, decoding.stop) for t in texts]
        n = decoding.num_samples
        return [texts[row * n:(row + 1) * n] for row in range(len(indices))]

    completions = map_batches(run_batch, prompt_lengths(tokenizer, prompts), batch_size, accelerator, desc, on_batch)
    model.train(was_training)
    return completions


def running_accuracy(items: Sequence[dict], judge: Callable[[dict, str], dict]) -> Callable[[list[int], list], str]:
    """A progress note: the share of first completions so far that `judge` calls correct."""
    counts = {"correct": 0, "seen": 0}

    def note(indices: list[int], completions: list[list[str]]) -> str:
        counts["correct"] += sum(judge(items[i], outs[0])["correct"] for i, outs in zip(indices, completions))
        counts["seen"] += len(indices)
        return f"acc={counts['correct'] / counts['seen']:.3f}"

    return note
