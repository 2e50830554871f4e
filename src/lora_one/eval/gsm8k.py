"""GSM8K: zero-shot with the training prompt (alpaca), scored by the final number of the completion
against the gold `#### N`."""
from lora_one.data.loading import load_hub_dataset
from lora_one.data.templates import build_prompt
from lora_one.eval.answers import extract_final_number, format_number, numbers_equal
from lora_one.eval.benchmark import GeneratingBenchmark, register
from lora_one.eval.generation import Decoding
from lora_one.eval.records import read_rows, select

HUB_ID, HUB_CONFIG = "openai/gsm8k", "main"
STOP = ("### Instruction", "Below is an instruction")  # the model starting a new example by itself
ANSWER_LINE = r"####[^\n]*\d[^\n]*\n"  # the training format's answer line, ended: nothing after it counts


@register
class GSM8K(GeneratingBenchmark):
    """Grade-school math word problems: the final number of the solution against the gold one."""

    name = "gsm8k"

    def load_items(self, cfg) -> list[dict]:
        """Test questions from `cfg.path` (jsonl: question, answer) or the hub's test split."""
        if cfg.path:
            rows = read_rows(str(cfg.path), required=("question", "answer"))
        else:
            rows = load_hub_dataset(HUB_ID, HUB_CONFIG, "test", "eval.gsm8k.path").to_list()
        items = [{"id": str(idx), "prompt": build_prompt("alpaca", {"instruction": row["question"]}),
                  "gold": extract_final_number(row["answer"])} for idx, row in enumerate(rows)]
        return select(items, cfg.limit, cfg.subset_seed)

    def decoding(self, cfg) -> Decoding:
        return Decoding(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                        stop=STOP, stop_after=ANSWER_LINE, seed=cfg.seed)

    def judge(self, item: dict, completion: str) -> dict:
        extracted = extract_final_number(completion)
        return {"extracted": format_number(extracted), "correct": numbers_equal(extracted, item["gold"])}

    def score(self, cfg, items: list[dict], completions: list[list[str]]) -> tuple[dict, list[dict]]:
        """Accuracy of each question's first completion; one record per question."""
        records = [{"idx": int(item["id"]), "prompt": item["prompt"], "completion": outs[0],
                    **self.judge(item, outs[0]), "gold": format_number(item["gold"])}
                   for item, outs in zip(items, completions)]
        correct = sum(r["correct"] for r in records)
        return {"accuracy": correct / max(len(records), 1), "correct": correct, "n": len(records)}, records
