"""Reproducing the paper's tables: the CPU-scale study (plan → resumable runs → learning-rate selection
on the validation split → REPRODUCTION.md with figures) and the paper-scale job arrays.

    python scripts/reproduce.py cpu [--out DIR]          # the study, resumable, then REPRODUCTION.md
    python scripts/reproduce.py paper --table gsm8k --dry-run
"""
