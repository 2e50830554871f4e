"""dataset.chat_template: every dataset option has it (false by default, so today's encoding is
unchanged, compared with ids built by hand); with true, an example is the user's turn of SmolLM2's
chat template and the label word the assistant's, closed by <|im_end|> (compared with ids built from
`apply_chat_template` by hand), GLUE prompts list the label words, GLUE scores that very target, and a
tokenizer without a chat template is one ConfigError line."""
import pytest
import torch
from accelerate import Accelerator
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import ROOT, compose_config
from lora_one import ConfigError
from lora_one.data.encoding import IGNORE_INDEX, encode_example, encode_rows
from lora_one.data.loading import to_examples
from lora_one.data.templates import ChatPrompt
from lora_one.eval import BENCHMARKS, glue
from lora_one.eval.cli import main as eval_cli
from lora_one.models import load_tokenizer

DATASETS = sorted(p.stem for p in (ROOT / "conf" / "dataset").glob("*.yaml"))
# One row of each GLUE task, and the user's text its chat prompt must be (written out by hand).
GLUE_ROWS = {
    "sst2": ({"sentence": "a gorgeous film .", "label": 1},
             "sst2 sentence: a gorgeous film .\nAnswer with one word: negative or positive."),
    "cola": ({"sentence": "Him left.", "label": 0},
             "cola sentence: Him left.\nAnswer with one word: unacceptable or acceptable."),
    "mrpc": ({"sentence1": "It rained.", "sentence2": "Rain fell.", "label": 1},
             "mrpc first: It rained. second: Rain fell.\nAnswer with one word: not_equivalent or equivalent."),
    "qnli": ({"question": "Who?", "sentence": "Ann did.", "label": 0},
             "qnli first: Who? second: Ann did.\nAnswer with one word: entailment or not_entailment."),
    "mnli": ({"premise": "A dog runs.", "hypothesis": "An animal moves.", "label": 0},
             "mnli first: A dog runs. second: An animal moves.\n"
             "Answer with one word: entailment, neutral or contradiction."),
}


def tokenizer_of(model: str):
    cfg = compose_config([f"model={model}"])
    return load_tokenizer(cfg.model, cfg.cache_dir)


@pytest.fixture(scope="module")
def smollm2():
    return tokenizer_of("smollm2_135m")


def examples(task: str, chat: bool) -> list[dict]:
    cfg = compose_config([f"dataset={task}", f"dataset.chat_template={str(chat).lower()}"])
    return to_examples([GLUE_ROWS[task][0]], cfg.dataset, "rows")


def chat_reference(tokenizer, user_text: str, word: str) -> tuple[list[int], int]:
    """(ids, prompt length) by hand: the templated user turn with the assistant's opening, the word, <|im_end|>."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": user_text}], add_generation_prompt=True,
                                           tokenize=True, return_dict=True)["input_ids"]
    word_ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    return prompt + word_ids + [tokenizer.convert_tokens_to_ids("<|im_end|>")], len(prompt)


# --- config

@pytest.mark.parametrize("option", DATASETS)
def test_every_dataset_has_chat_template_off_by_default_and_composes_with_it_on(option):
    assert compose_config([f"dataset={option}"]).dataset.chat_template is False
    assert compose_config([f"dataset={option}", "dataset.chat_template=true"]).dataset.chat_template is True


def test_a_chat_template_that_is_no_boolean_is_named():
    cfg = compose_config(["dataset=sst2", "dataset.chat_template=yes"])
    with pytest.raises(ConfigError, match="dataset.chat_template must be true or false \\(got 'yes'\\)"):
        to_examples([GLUE_ROWS["sst2"][0]], cfg.dataset, "rows")


# --- prompts

@pytest.mark.parametrize("task", sorted(GLUE_ROWS))
def test_glue_chat_prompts_list_the_label_words(task):
    row, user_text = GLUE_ROWS[task]
    [plain], [chat] = examples(task, False), examples(task, True)
    assert type(plain["prompt"]) is str and plain["prompt"] == user_text.split("\nAnswer")[0]
    assert isinstance(chat["prompt"], ChatPrompt) and chat["prompt"] == user_text
    label_names = compose_config([f"dataset={task}"]).dataset.label_names
    assert chat["response"] == plain["response"] == label_names[row["label"]]


def test_prompts_without_label_words_are_wrapped_as_they_are():
    cfg = compose_config(["dataset=gsm8k", "dataset.chat_template=true"])
    [chat] = to_examples([{"question": "1 + 1?", "answer": "2"}], cfg.dataset, "rows")
    assert isinstance(chat["prompt"], ChatPrompt)
    assert chat["prompt"].endswith("### Instruction:\n1 + 1?\n\n### Response:\n")


# --- encoding

@pytest.mark.parametrize("model", ["smollm2_135m", "tiny_llama", "tiny_t5"])
def test_the_default_encoding_is_unchanged(model):
    """chat_template=false: causal = tokenizer(prompt) + tokenizer(' ' + word) + eos, the prompt masked;
    seq2seq = the prompt without special tokens in, word + eos out."""
    tokenizer = tokenizer_of(model)
    seq2seq = compose_config([f"model={model}"]).model.type == "seq2seq"
    [example] = examples("mrpc", False)
    encoded = encode_example(tokenizer, example["prompt"], example["response"], 10_000, seq2seq)
    if seq2seq:
        assert encoded == {"input_ids": tokenizer(example["prompt"], add_special_tokens=False)["input_ids"],
                           "labels": tokenizer("equivalent", add_special_tokens=False)["input_ids"]
                           + [tokenizer.eos_token_id]}
        return
    prompt = tokenizer(example["prompt"])["input_ids"]
    word = tokenizer(" equivalent", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert encoded == {"input_ids": prompt + word, "labels": [IGNORE_INDEX] * len(prompt) + word}


@pytest.mark.parametrize("task", sorted(GLUE_ROWS))
def test_chat_encoding_is_the_templated_user_turn_then_the_label_and_im_end(smollm2, task):
    [example] = examples(task, True)
    encoded = encode_example(smollm2, example["prompt"], example["response"], 10_000, False)
    ids, prompt_length = chat_reference(smollm2, GLUE_ROWS[task][1], example["response"])
    assert encoded["input_ids"] == ids
    assert encoded["labels"] == [IGNORE_INDEX] * prompt_length + ids[prompt_length:]  # exactly the prompt masked
    assert smollm2.decode(ids[prompt_length:]) == example["response"] + "<|im_end|>"
    # the same ids as the template writes for the whole conversation, less the newline after <|im_end|>
    conversation = smollm2.apply_chat_template([{"role": "user", "content": GLUE_ROWS[task][1]},
                                                {"role": "assistant", "content": example["response"]}],
                                               tokenize=True, return_dict=True)["input_ids"]
    assert conversation == ids + smollm2("\n", add_special_tokens=False)["input_ids"]


def test_chat_rows_are_truncated_like_plain_ones(smollm2):
    """max_length cuts the end: a response cut away entirely drops the row, as for plain prompts."""
    [example] = examples("sst2", True)
    full, prompt_length = chat_reference(smollm2, GLUE_ROWS["sst2"][1], "positive")
    cut = encode_example(smollm2, example["prompt"], example["response"], prompt_length + 1, False)
    assert cut["input_ids"] == full[:prompt_length + 1] and cut["labels"][-1] == full[prompt_length]
    assert encode_rows(smollm2, [example], prompt_length, False) == []


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_t5"])
def test_a_tokenizer_without_chat_template_is_one_config_error(model):
    [example] = examples("sst2", True)
    seq2seq = model == "tiny_t5"
    with pytest.raises(ConfigError, match="^dataset.chat_template=true, but the tokenizer .* has no chat template"):
        encode_rows(tokenizer_of(model), [example], 128, seq2seq)


def test_the_eval_cli_takes_the_override_and_names_a_missing_template(shared_data, tmp_path):
    with pytest.raises(SystemExit, match="^error: dataset.chat_template=true, but the tokenizer .* no chat template"):
        eval_cli("glue", ["--task", "sst2", "--path", str(shared_data / "glue" / "SST-2"), "--limit", "2",
                          "--model", "tiny_llama", "--output_dir", str(tmp_path), "dataset.chat_template=true"])


# --- GLUE scores the chat target

def test_glue_scores_each_label_as_the_chat_target(smollm2, tmp_path):
    """log p of (label word, <|im_end|>) after the templated prompt, by hand from one unpadded forward pass
    of a random Llama over SmolLM2's vocabulary, for prompts of different lengths, batched."""
    sentences = ["a gorgeous film .", "dull , dull , dull and far too long for what it is .", "fine ."]
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(sentences)))
    cfg = compose_config(["dataset=sst2", f"dataset.path={tmp_path}", "dataset.chat_template=true",
                          "eval=glue"]).eval.glue
    prompts = [item["prompt"] for item in BENCHMARKS["glue"].load_items(cfg)]
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(smollm2), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         pad_token_id=smollm2.pad_token_id)).eval()
    scores = glue.label_log_probs(model, smollm2, prompts, ["negative", "positive"], 2, Accelerator(cpu=True))
    for sentence, per_label in zip(sentences, scores):
        for word, lps in zip(["negative", "positive"], per_label):
            user_text = f"sst2 sentence: {sentence}\nAnswer with one word: negative or positive."
            ids, start = chat_reference(smollm2, user_text, word)
            with torch.no_grad():
                log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
            assert lps == pytest.approx([log_probs[t - 1, ids[t]].item() for t in range(start, len(ids))], abs=1e-4)
