"""The tokenizer of the random tiny test models (`model.builtin_tokenizer: true`), built in code:
no download, no GGUF, ~0.2 s.

A byte-level BPE (the GPT-2 / SmolLM2 scheme): the 256 byte symbols make every string round-trip,
and the merges are learned by the `tokenizers` BPE trainer from the text these models see in the
tests: the project's own prompt template over generated toy_math problems, plus MMLU's answer lines
so that " A" … " D" are one token each (the MMLU evaluator scores those four next-token logits).
The trainer is deterministic, so every process (torchrun, a resumed job) builds the same vocabulary."""
import functools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lora_one.data.templates import build_prompt
from lora_one.data.toy_math import generate_toy_math

EOS, PAD = "<|endoftext|>", "<|pad|>"
MAX_VOCAB = 1024  # an upper bound: the corpus below supports ~830 tokens
CORPUS_PROBLEMS = 2000
MMLU_ANSWER_LINES = "\n".join(f"Answer: {letter}" for letter in "ABCD")


def training_corpus() -> list[str]:
    """Alpaca-formatted toy_math problems with their worked answers, and MMLU answer lines."""
    problems = generate_toy_math(CORPUS_PROBLEMS, seed=0)
    texts = [build_prompt("alpaca", {"instruction": row["question"]}) + row["answer"] for row in problems]
    return texts + [MMLU_ANSWER_LINES] * 50


@functools.lru_cache(maxsize=1)
def tiny_tokenizer_json() -> str:
    """The trained byte-level BPE, serialised (built once per process)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=MAX_VOCAB, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(training_corpus(), trainer)
    return tokenizer.to_str()


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh transformers tokenizer over the byte-level BPE (eos and pad are distinct tokens)."""
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tiny_tokenizer_json()), eos_token=EOS,
                                   pad_token=PAD)
