"""Examples → token ids with the prompt masked out of the labels, and the padding collator."""
import torch
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from lora_one import ConfigError

IGNORE_INDEX = -100  # label value the loss skips


def encode_example(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, max_length: int, seq2seq: bool) -> dict:
    """Causal: input = prompt + response + eos, labels = -100 on the prompt part.
    Seq2seq: input = prompt, labels = response + eos. Both truncated to `max_length`.

    Causal: a response that would be glued to the prompt's last word (`…journey .` + `positive`) is
    read after a space, as in running text (`… . positive`): BPE tokenizers have a word-initial token
    for it (`Ġpositive`), and the word glued on is a piece the model has hardly seen (SmolLM2: 14.0
    nats for `positive` vs 10.6 for ` positive`). Prompts ending in whitespace (Alpaca's `Response:\n`)
    are unchanged."""
    if not seq2seq and prompt and response and not prompt[-1].isspace() and not response[0].isspace():
        response = " " + response
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if seq2seq:
        input_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][:max_length]
        return {"input_ids": input_ids, "labels": response_ids[:max_length]}
    prompt_ids = tokenizer(prompt)["input_ids"]
    input_ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def encode_rows(tokenizer, examples: list[dict], max_length: int, seq2seq: bool) -> list[dict]:
    """Encode every example, dropping those whose response was truncated away entirely
    (they would contribute a 0/0 loss)."""
    encoded = [encode_example(tokenizer, ex["prompt"], ex["response"], max_length, seq2seq) for ex in examples]
    return [e for e in encoded if any(label != IGNORE_INDEX for label in e["labels"])]


def make_collator(tokenizer) -> DataCollatorForSeq2Seq:
    """Right-pads input_ids with the pad token and labels with -100; builds the attention mask."""
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")


def make_batches(tokenizer, encoded: list[dict], batch_size: int, num_batches: int) -> list[dict[str, torch.Tensor]]:
    """The first `num_batches` × `batch_size` encoded examples as padded batches (the init's G batches)."""
    needed = batch_size * num_batches
    if len(encoded) < needed:
        raise ConfigError(f"init.bsz × init.iters = {needed} examples, but the training set has only {len(encoded)}")
    collate = make_collator(tokenizer)
    return [dict(collate(encoded[i * batch_size : (i + 1) * batch_size])) for i in range(num_batches)]
