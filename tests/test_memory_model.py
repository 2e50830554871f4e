"""bench/memory_model.py: its terms for a tiny config against numbers worked out by hand, and (slow) its prediction
for SmolLM2-135M on one CPU process against a measured peak."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import memory_model as mm  # noqa: E402

# hidden 8, intermediate 16, 2 layers, 2 heads with 1 KV head (kv width 4), vocabulary 10, untied embeddings
TINY = mm.Shapes("tiny", hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, vocab=10, tied_embeddings=False)
# per rank: init 6 tokens in micro-batches of 3, a training batch of 4 tokens, bf16 weights, r = 2
WORK = mm.Workload(init_tokens=6, init_micro_batch_tokens=3, train_tokens=4, weight_bytes=2, rank=2)
ONE = mm.Parallel("1 GPU")


def test_parameter_counts():
    # targets q 8×8, k 4×8, v 4×8, o 8×8, gate 16×8, up 16×8, down 8×16: 576 weights; + 2 norms of 8
    assert TINY.block_params == 592
    assert TINY.params == 2 * 10 * 8 + 2 * 592 + 8 == 1352
    # r · (m + n) per target: 2 · (16 + 12 + 12 + 16 + 24 + 24 + 24) = 256 a block
    assert TINY.lora_params(2) == 512


def test_streaming_init_terms():
    terms = mm.init_terms(TINY, WORK, ONE)
    # saved per token and block: 2 · (4·8 + 2·4 + 4·16) + 2 · 4 · 8 (fp32 norm inputs) + 4 · (2 + 2 heads) = 288;
    # recomputed: 288 + 2 · (8 + 16) = 336 a token, 6 tokens
    # largest G + SVD: 16×8 (before 8×16, as large): G 128 · (4 + 2), SVD 4 · (3 · 128 + 3.5 · 8²) = 2432
    expected = {"weights": 2 * 1352, "gathered block": 0, "LoRA state": 4 * 512, "activations": (2 + 2) * 6 * 8 * 2,
                "head": 3 * 10 * (3 * 4 + 2), "block recompute": 6 * 336, "G": 128 * 6, "SVD": 2432}
    assert {name: terms[name] for name in expected} == pytest.approx(expected)
    assert terms["peak"] == pytest.approx(2704 + 2048 + 384 + max(420, 2016 + 768 + 2432))


def test_sharded_init_splits_weights_and_gathers_one_block():
    terms = mm.init_terms(TINY, WORK, mm.Parallel("FSDP ×2", 2, sharded=True))
    assert (terms["weights"], terms["gathered block"], terms["LoRA state"]) == pytest.approx((1352, 2 * 592, 1024))
    assert terms["G"] == 128 * 6  # the owner rank holds the whole layer's G


def test_train_step_terms():
    terms = mm.train_terms(TINY, WORK, ONE)
    # 16 bytes a LoRA parameter; 2 blocks × 4 tokens × 288 + the final norm's fp32 input 4 tokens × 4 · 8
    assert terms["LoRA state"] == 16 * 512
    assert terms["activations"] == 2 * 4 * 288 + 4 * 4 * 8
    assert terms["head"] == 4 * 10 * 14 and terms["block recompute"] == 4 * 2 * (8 + 16)
    assert terms["peak"] == 2704 + 8192 + 2432 + 560
    ddp = mm.train_terms(TINY, WORK, mm.Parallel("DDP ×2", 2))
    assert ddp["LoRA state"] == 16 * 512 + 4 * 512  # + DDP's gradient buckets
    checkpointed = mm.train_terms(TINY, WORK, ONE, checkpointing=True)
    assert checkpointed["activations"] == (2 + 1) * 4 * 8 * 2 + 4 * 4 * 8


def test_official_init_keeps_every_gradient_on_host():
    terms = mm.official_init_terms(TINY, WORK, ONE)
    assert terms["host"] == 4 * 2 * 576


def test_public_shapes():
    assert mm.LLAMA_2_7B.params == 6_738_415_616
    assert mm.LLAMA_2_13B.params == 13_015_864_320
    assert mm.LLAMA_3_70B.params == 70_553_706_496


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["train", "init"])
def test_smollm2_prediction_within_15_percent_of_a_measurement(phase):
    measured, shapes = mm.measure_increment("smollm2", phase, processes=1)
    assert mm.predicted_increment(shapes, phase, 1) == pytest.approx(measured, rel=0.15)
