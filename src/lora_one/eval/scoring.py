"""A model's probabilities read without generating, for causal and encoder-decoder models alike:
the next-token logits after each prompt, and the log-probability of each token of given targets.

A causal model reads prompt and target as one sequence, its logits at position t predicting token
t + 1. An encoder-decoder model (T5) reads the prompt in its encoder; its decoder starts from
`decoder_start_token_id` and its logits at decoder position t predict target token t.
The vocabulary head is the costly part of a forward of a small model with a large vocabulary
(SmolLM2: 49k words): it is applied only where a probability is read."""
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
    start = torch.full((rows, 1), model.config.decoder_start_token_id, dtype=torch.long,
                       device=batch["input_ids"].device)
    return model(**batch, decoder_input_ids=start).logits[:, 0, :]


def shared_prompt_log_probs(model, prompts: list[list[int]], targets: list[list[list[int]]], pad_token_id: int,
                            device) -> list[list[list[float]]]:
    """[prompt][target] → log p(target token | prompt, the target's tokens before it) for each token of
    each of a prompt's targets (token ids; every prompt has as many targets). Each prompt is read once
    for all its targets: a causal model continues every target from the prompt's KV cache, an
    encoder-decoder model decodes every target from the prompt's one encoder pass."""
    per_prompt = len(targets[0])
    flat = [target for row in targets for target in row]
    if is_encoder_decoder(model):
        scores = seq2seq_target_log_probs(model, prompts, flat, per_prompt, pad_token_id, device)
    else:
        scores = causal_target_log_probs(model, prompts, flat, per_prompt, pad_token_id, device)
    lists = [row[:len(target)].tolist() for row, target in zip(scores, flat)]
    return [lists[p * per_prompt:(p + 1) * per_prompt] for p in range(len(prompts))]


def causal_target_log_probs(model, prompts, targets, per_prompt: int, pad_token_id: int, device) -> torch.Tensor:
    """(targets, longest target): the prompts left-padded so that each one's next token sits at the end
    (positions counted from each prompt's first token), the vocabulary head applied only at the last
    position; then the targets, right-padded, read as one continuation batch over the cache repeated
    `per_prompt` times, each token but the last predicting the next (the head at each of those, and at
    the padding of the shorter targets)."""
    mask = pad([[1] * len(p) for p in prompts], 0, left=True).to(device)
    out = model(input_ids=pad(prompts, pad_token_id, left=True).to(device), attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1).repeat_interleave(per_prompt, dim=0)
    scores = first.gather(-1, torch.tensor([[t[0]] for t in targets], device=device))
    read = [t[:-1] for t in targets]
    width = max(map(len, read))
    if width == 0:  # single-token targets: the prompt pass predicted them all
        return scores
    cache = out.cache
    cache.batch_repeat_interleave(per_prompt)
    read_mask = pad([[1] * len(r) for r in read], 0, width=width).to(device)
    positions = mask.sum(-1, keepdim=True).repeat_interleave(per_prompt, dim=0) + torch.arange(width, device=device)
    logits = model(input_ids=pad(read, pad_token_id, width=width).to(device), cache=cache, position_ids=positions,
                   attention_mask=torch.cat([mask.repeat_interleave(per_prompt, dim=0), read_mask], dim=1)).logits
    following = pad([t[1:] for t in targets], 0, width=width).to(device)
    later = torch.log_softmax(logits.float(), dim=-1).gather(-1, following.unsqueeze(-1)).squeeze(-1)
    return torch.cat([scores, later], dim=1)


def seq2seq_target_log_probs(model, prompts, targets, per_prompt: int, pad_token_id: int, device) -> torch.Tensor:
    """(targets, longest target): one encoder pass over the prompts, its output repeated `per_prompt`
    times for the decoder, which reads each target shifted right (the model shifts the labels itself)."""
    mask = pad([[1] * len(p) for p in prompts], 0).to(device)
    encoded = model.get_encoder()(input_ids=pad(prompts, pad_token_id).to(device), attention_mask=mask)
    labels = pad(targets, IGNORE_INDEX).to(device)
    logits = model(encoder_outputs=(encoded.last_hidden_state.repeat_interleave(per_prompt, dim=0),),
                   attention_mask=mask.repeat_interleave(per_prompt, dim=0), labels=labels).logits
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)


def pad(rows: list[list[int]], value: int, left: bool = False, width: int | None = None) -> torch.Tensor:
    width = max(map(len, rows)) if width is None else width
    return torch.tensor([[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows])
