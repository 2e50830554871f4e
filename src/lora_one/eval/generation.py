"""Batched work over prompts for the evaluators: generation (left padding, KV cache, stop strings)
and any other per-batch model call, split across Accelerate processes.

The prompts are sorted by length and cut into batches once; process p takes batches p, p+P, ...
So every batch holds the same prompts, with the same padding, whatever the number of processes,
and the gathered results are those of one process."""
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from lora_one.eval.scoring import is_encoder_decoder
from lora_one.progress import progress


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy (or beam search with num_beams > 1)
    top_p: float = 1.0
    num_beams: int = 1
    num_samples: int = 1  # completions per prompt
    stop: tuple[str, ...] = ()  # the completion is cut before the first of these
    stop_after: str = ""  # a regex: the completion ends with its first match (a row's generation stops there)
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
    rows = progress(desc=desc, total=sum(len(batches[b]) for b in mine), unit="prompt",
                    show=accelerator.is_main_process)
    pairs = []
    for number in mine:
        indices = batches[number]
        results = run_batch(number, indices)
        pairs.extend(zip(indices, results))
        if on_batch is not None:
            rows.set_postfix_str(on_batch(indices, results), refresh=False)  # shown with the update: no extra line
        rows.update(len(indices))
    rows.close()
    if accelerator.num_processes > 1:
        pairs = gather_object(pairs)
    ordered = [None] * len(lengths)
    for index, result in pairs:
        ordered[index] = result
    return ordered


def truncate_at_stop(text: str, stop: Sequence[str], stop_after: str = "") -> str:
    """`text` up to the first stop string, or to the end of the first `stop_after` match if earlier."""
    cut = min((text.find(s) for s in stop if s in text), default=len(text))
    if stop_after and (match := re.search(stop_after, text)) is not None:
        cut = min(cut, match.end())
    return text[:cut]


class PatternMatched(StoppingCriteria):
    """Stops each row once its completion (the tokens after `prompt_length`) matches `pattern`: e.g. a
    GSM8K solution's "#### 18" line, after which a model that never learnt to stop repeats itself until
    max_new_tokens and may end on a number cut in half."""

    def __init__(self, pattern: str, tokenizer, prompt_length: int):
        self.pattern, self.tokenizer, self.prompt_length = re.compile(pattern), tokenizer, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:], skip_special_tokens=True)
        return torch.tensor([self.pattern.search(text) is not None for text in texts], device=input_ids.device)


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
        # a causal model's output starts with the (left-padded) prompt; an encoder-decoder's decoder starts fresh
        prompt_length = 0 if is_encoder_decoder(model) else batch["input_ids"].shape[1]
        stopping = StoppingCriteriaList([PatternMatched(decoding.stop_after, tokenizer, prompt_length)]
                                        if decoding.stop_after else [])
        output = model.generate(**batch, generation_config=config, tokenizer=tokenizer, stopping_criteria=stopping)
        texts = tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
        texts = [truncate_at_stop(t, decoding.stop, decoding.stop_after) for t in texts]
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
