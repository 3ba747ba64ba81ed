r"""Rewards: rule judges per answer type (:mod:`.rules`), an optional LLM judge (:mod:`.llm`), and the
accumulative tool reward that completes an episode's reward (:mod:`.tool`).

    from pyvision_env.rewards import judge, episode_reward

    score = judge("\\boxed{'B'}", "B", "choice")           # 1.0
    parts = episode_reward(score, n_tool_calls=3)          # accuracy 1.0 + tool 0.3
"""

from .llm import DEFAULT_JUDGE_PROMPT, LLMJudge, LLMJudgeConfig
from .rules import (
    ANSWER_TYPES,
    FLOAT_REL_TOL,
    MRA_THRESHOLDS,
    RIGHT_THRESHOLD,
    VSI_NUMERICAL_SOURCES,
    accuracy_of,
    check_judge_options,
    infer_answer_type,
    is_right,
    judge,
    judge_choice,
    judge_math,
    judge_mra,
    judge_number,
    judge_options,
    judge_text,
    mra_score,
    normalize_text,
    options_in_question,
    parse_number,
)
from .tool import RewardComponents, episode_reward, tool_reward

__all__ = [
    # rule judges
    "ANSWER_TYPES",
    "FLOAT_REL_TOL",
    "MRA_THRESHOLDS",
    "RIGHT_THRESHOLD",
    "VSI_NUMERICAL_SOURCES",
    "accuracy_of",
    "check_judge_options",
    "infer_answer_type",
    "is_right",
    "judge",
    "judge_choice",
    "judge_math",
    "judge_mra",
    "judge_number",
    "judge_options",
    "judge_text",
    "mra_score",
    "normalize_text",
    "options_in_question",
    "parse_number",
    # LLM judge
    "DEFAULT_JUDGE_PROMPT",
    "LLMJudge",
    "LLMJudgeConfig",
    # episode reward
    "RewardComponents",
    "episode_reward",
    "tool_reward",
]
