"""Run one evaluation arm slowly, so a test can kill it while it appends predictions.

python tests/faults/eval_driver.py TOKENIZER_DIR OUT_DIR N_QUESTIONS SECONDS_PER_CALL
"""

from __future__ import annotations

import sys
import time

from ssrl_trl.data import QAItem
from ssrl_trl.environments import SelfSearchEnv
from ssrl_trl.evaluation.runner import Arm, run_arm
from ssrl_trl.prompts import TEMPLATES
from ssrl_trl.protocol import SSRL
from ssrl_trl.rollout import Budgets, SamplingConfig, ScriptedBackend


def items(n: int) -> list[QAItem]:
    return [QAItem(f"q:{i}", f"What is item {i}?", [f"answer {i}"], "toy") for i in range(n)]


def arm() -> Arm:
    budgets = Budgets(max_turns=1, max_tokens_per_turn=160, max_completion_tokens=160)
    return Arm("self", SelfSearchEnv(SSRL), TEMPLATES["ssrl"], budgets, SamplingConfig(temperature=0.0))


def backend(tokenizer, questions: list[QAItem], delay: float) -> ScriptedBackend:
    def script(ids, call):
        time.sleep(delay)
        text = tokenizer.decode(ids)
        item = next(it for it in questions if it.question in text)
        return f"<think>{'é' * 40}</think><answer>{item.golden_answers[0]}</answer>"

    return ScriptedBackend(tokenizer, script)


if __name__ == "__main__":
    from transformers import AutoTokenizer

    tok_dir, out, n, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    questions = items(n)
    run_arm(
        arm(), questions, backend(tokenizer, questions, delay), tokenizer, out, batch_size=1, progress=False
    )
