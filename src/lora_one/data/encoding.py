"""Examples → token ids with the prompt masked out of the labels, and the padding collator."""
import functools
from dataclasses import dataclass

import torch
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from lora_one import ConfigError
from lora_one.data.templates import ChatPrompt

IGNORE_INDEX = -100  # label value the loss skips


def encode_example(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, max_length: int,
                   seq2seq: bool) -> dict:
    """`full_example` truncated to `max_length` tokens."""
    return truncate(full_example(tokenizer, prompt, response, seq2seq), max_length)


def truncate(example: dict, max_length: int) -> dict:
    """The first `max_length` ids of the input and of the labels: what is cut is the end (causal: of the
    response first, then of the prompt; seq2seq: of each)."""
    return {key: ids[:max_length] for key, ids in example.items()}


def full_example(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, seq2seq: bool) -> dict:
    """Causal: input = prompt + response + eos, labels = -100 on the prompt part.
    Seq2seq: input = prompt, labels = response + eos.

    Causal: a response that would be glued to the prompt's last word (`…journey .` + `positive`) is
    read after a space, as in running text (`… . positive`): BPE tokenizers have a word-initial token
    for it (`Ġpositive`), and the word glued on is a piece the model has hardly seen (SmolLM2: 14.0
    nats for `positive` vs 10.6 for ` positive`). Prompts ending in whitespace (Alpaca's `Response:\n`)
    are unchanged.

    A `ChatPrompt` (dataset.chat_template) is the user's turn of the tokenizer's chat template, with the
    assistant's turn opened after it (the generation prompt): that is the prompt part; the response,
    which starts the assistant's turn as written, and the template's end-of-turn token are the labels."""
    if isinstance(prompt, ChatPrompt):
        prompt_ids, response_ids = chat_ids(tokenizer, prompt, response)
    else:
        prompt_ids, response_ids = text_ids(tokenizer, prompt, response, seq2seq)
    if seq2seq:
        return {"input_ids": prompt_ids, "labels": response_ids}
    return {"input_ids": prompt_ids + response_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids}


def text_ids(tokenizer, prompt: str, response: str, seq2seq: bool) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids + eos) of a plain-text prompt (see `full_example`)."""
    if not seq2seq and prompt and response and not prompt[-1].isspace() and not response[0].isspace():
        response = " " + response
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if seq2seq:  # the encoder reads the prompt alone
        return tokenizer(prompt, add_special_tokens=False)["input_ids"], response_ids
    return tokenizer(prompt)["input_ids"], response_ids


def chat_ids(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """(the user's turn + the assistant's opening, the response + end of turn) in the chat template."""
    check_chat_template(tokenizer)
    prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": str(prompt)}], add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"]
    return prompt_ids, tokenizer(response, add_special_tokens=False)["input_ids"] + [end_of_turn_id(tokenizer)]


def check_chat_template(tokenizer) -> None:
    if not tokenizer.chat_template:
        name = tokenizer.name_or_path or type(tokenizer).__name__
        raise ConfigError(f"dataset.chat_template=true, but the tokenizer '{name}' has no chat template "
                          "(the tiny test models and T5 have none): set dataset.chat_template=false")


@functools.lru_cache(maxsize=8)
def end_of_turn_id(tokenizer) -> int:
    """The token the chat template closes an assistant's turn with: the first it writes after the
    turn's text (SmolLM2: `<|im_end|>`, then a newline that belongs to no turn)."""
    text = "ok"
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "?"}, {"role": "assistant", "content": text}],
                                         tokenize=False)
    closing = tokenizer(chat[chat.rindex(text) + len(text):], add_special_tokens=False)["input_ids"]
    if not closing:
        raise ConfigError(f"the chat template of '{tokenizer.name_or_path}' writes nothing after an assistant's turn: "
                          "no end-of-turn token to train; set dataset.chat_template=false")
    return closing[0]


@dataclass
class EncodedRows:
    rows: list[dict]  # the examples that keep a response token, truncated to max_length
    dropped: int  # examples whose prompt alone takes max_length tokens
    truncated: int  # kept examples cut short at max_length


def encode_counting(tokenizer, examples: list[dict], max_length: int, seq2seq: bool) -> EncodedRows:
    """Encode every example, truncated to `max_length`, and count what that costs.

    An example whose prompt alone takes all `max_length` tokens (only causal prompts can) has no
    response token left: it would contribute a 0/0 loss, so it is dropped. It is not kept by cutting
    the prompt from the left instead: the response would then be learned, or scored, as the answer to
    a question whose beginning (the template's instruction, the start of the problem) the model never
    sees. Every other example is encoded exactly as before."""
    kept, dropped, cut = [], 0, 0
    for example in examples:
        full = full_example(tokenizer, example["prompt"], example["response"], seq2seq)
        row = truncate(full, max_length)
        if all(label == IGNORE_INDEX for label in row["labels"]):
            dropped += 1
            continue
        cut += row != full
        kept.append(row)
    return EncodedRows(kept, dropped, cut)


def encode_rows(tokenizer, examples: list[dict], max_length: int, seq2seq: bool) -> list[dict]:
    """Encode every example, dropping those whose response was truncated away entirely (`encode_counting`)."""
    return encode_counting(tokenizer, examples, max_length, seq2seq).rows


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
