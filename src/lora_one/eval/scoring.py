"""A model's probabilities read without generating, for causal and encoder-decoder models alike:
the next-token logits after each prompt, and the log-probability of each token of given targets.

A causal model reads prompt and target as one sequence, its logits at position t predicting token
t + 1. An encoder-decoder model (T5) reads the prompt in its encoder; its decoder starts from
`decoder_start_token_id` and its logits at decoder position t predict target token t."""
import torch

from lora_one.data.encoding import IGNORE_INDEX


def is_encoder_decoder(model) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def next_token_logits(model, batch) -> torch.Tensor:
    """(rows, vocab): the logits of the first token after each prompt of a left-padded batch, at the
    last position (causal) or at the decoder's first step (encoder-decoder)."""
    if not is_encoder_decoder(model):
        return model(**batch).logits[:, -1, :]
    rows = batch["input_ids"].shape[0]
    start = torch.full((rows, 1), model.config.decoder_start_token_id, dtype=torch.long, device=batch["input_ids"].device)
    return model(**batch, decoder_input_ids=start).logits[:, 0, :]


def target_log_probs(model, batch) -> list[list[float]]:
    """log p(target token | everything before it) for each target token of each row (in order), from a
    right-padded batch of `encode_example` rows: `labels` holds the target ids, IGNORE_INDEX elsewhere
    (causal: on the prompt and the padding; encoder-decoder: on the padding)."""
    labels = batch["labels"]
    if is_encoder_decoder(model):  # the model shifts the labels right into decoder inputs itself
        logits = model(**batch).logits
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1, :]
        labels = labels[:, 1:]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    is_target = labels != IGNORE_INDEX
    picked = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return [row[mask].tolist() for row, mask in zip(picked, is_target)]
