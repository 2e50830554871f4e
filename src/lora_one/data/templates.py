"""Every prompt the project writes, in one place: training, the init's gradient batches and the
evaluators all format examples through `build_prompt`, so they cannot drift apart."""

ALPACA = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
GLUE_SINGLE = "{task} sentence: {sentence}"
GLUE_PAIR = "{task} first: {first} second: {second}"
ANSWER_CHOICES = "Answer with one word: {choices}."  # a chat prompt's last line for a classification task

TEMPLATES = {"alpaca", "glue_single", "glue_pair"}


def build_prompt(template: str, fields: dict[str, str]) -> str:
    """Format one example's prompt. `fields` maps the template's placeholders to text."""
    if template == "alpaca":
        if fields.get("input"):
            return ALPACA_WITH_INPUT.format(**fields)
        return ALPACA.format(instruction=fields["instruction"])
    if template == "glue_single":
        return GLUE_SINGLE.format(**fields)
    if template == "glue_pair":
        return GLUE_PAIR.format(**fields)
    raise KeyError(f"unknown prompt template {template!r}; known: {sorted(TEMPLATES)}")


class ChatPrompt(str):
    """A prompt meant as the user's turn of a chat (`dataset.chat_template: true`): `encode_example`
    writes it in the tokenizer's chat template and the response as the assistant's turn. It is a str
    of the user's text, so whatever shows, stores or measures prompts (predictions files, batching by
    length) reads it as before, and every consumer of `encode_example` (training, the held-out loss,
    GLUE scoring) encodes it alike."""


def chat_prompt(prompt: str, label_names) -> ChatPrompt:
    """The user's turn: the prompt, then for a classification task (`label_names`) the words to answer
    with; an instruction-tuned model answers the question it is asked, and "sst2 sentence: …" alone
    asks for no label word."""
    if label_names:
        *first, last = list(label_names)
        prompt += "\n" + ANSWER_CHOICES.format(choices=f"{', '.join(first)} or {last}")
    return ChatPrompt(prompt)
