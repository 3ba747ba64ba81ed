"""The config of each env: the keyword arguments of ``gym.make`` (unknown keys and bad values fail there)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..prompts import PromptStyle
from ..protocol import get_protocol
from ..rewards import LLMJudgeConfig
from ..sandbox import SandboxConfig
from ..visual_tokens import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS, get_rule


class EnvConfig(BaseModel):
    """Settings shared by both envs. Defaults follow PyVision-RL where it has one."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    tasks: Any = Field("synthetic", description="A list of task dicts, a path to a JSONL/JSON/parquet file, or "
                       "a synthetic suite name ('synthetic' picks the env's own modality).")
    max_turns: int = Field(10, ge=1, description="Model turns per episode; the episode is truncated after.")
    exec_timeout_s: float = Field(30.0, gt=0, description="Deadline of one code execution.")
    memory_limit_mb: int = Field(2048, ge=64, description="Memory the episode's code may add to its interpreter.")
    max_output_chars: int = Field(8000, ge=64, description="Interpreter text kept per step (head and tail).")
    max_frames_per_step: int = Field(8, ge=0, description="Frames returned per step.")
    max_frames_per_episode: int = Field(32, ge=0, description="Frames returned per episode (PyVision-RL: 32).")
    max_frame_pixels: int = Field(2_000_000, ge=64, description="Frames above this are downscaled.")
    end_on_error: bool = Field(False, description="End the episode on a code error, timeout or crash (the "
                               "paper's training behaviour); by default the model sees the traceback and goes on.")
    tool_reward_per_call: float = Field(0.1, ge=0, description="Added per executed code block when the answer "
                                        "is right (failed executions count).")
    tool_reward_cap: float | None = Field(None, ge=0, description="Upper bound of the tool reward (None: no cap).")
    format_error_reward: float = Field(0.0, le=0, description="Added once per malformed turn (0: none, as in "
                                       "PyVision-RL, where malformed turns only cost turns).")
    step_reward: float = Field(0.0, description="Reward of every step that does not end the episode.")
    dialect: str = Field("pyvision", description="Turn protocol: pyvision, fenced or tool_call.")
    prompt_style: PromptStyle = Field("pyvision", description="pyvision (ours) or pyvision_rl (for the "
                                      "released PyVision-RL models).")
    system_prompt: str | None = Field(None, description="Replaces the built-in system prompt.")
    image_placeholder: str = Field("<image>", min_length=1, description="Text standing for one image.")
    visual_token_rule: str = Field("qwen2.5-vl", description="How visual tokens are estimated.")
    visual_token_min_pixels: int = Field(QWEN_MIN_PIXELS, ge=1)
    visual_token_max_pixels: int = Field(QWEN_MAX_PIXELS, ge=1)
    mra_reward: Literal["graded", "binary"] = Field("binary", description="How an 'mra' task pays: binary (1 "
                                                    "from an MRA score of 0.5) or graded (the score, as PyVision-RL).")
    judge: Literal["rule", "llm"] = Field("rule", description="rule: the judge of the task's answer_type; "
                                          "llm: an OpenAI-compatible judge model (llm_judge settings).")
    llm_judge: LLMJudgeConfig | None = None
    isolation: Literal["auto", "strict", "bwrap", "none"] = Field(
        "auto", description="Sandbox isolation: auto (the strongest this kernel allows, warning about gaps), "
        "strict (refuse gaps), bwrap (also a read-only root under bubblewrap), none (debugging only).")

    @field_validator("dialect")
    @classmethod
    def _known_dialect(cls, name: str) -> str:
        get_protocol(name)
        return name

    @field_validator("visual_token_rule")
    @classmethod
    def _known_rule(cls, name: str) -> str:
        get_rule(name)
        return name

    def model_post_init(self, _context: Any) -> None:
        if self.judge == "llm" and self.llm_judge is None:
            raise ValueError("judge='llm' needs llm_judge={'base_url': ..., 'model': ...}")

    def sandbox_config(self) -> SandboxConfig:
        return SandboxConfig(exec_timeout_s=self.exec_timeout_s, memory_limit_mb=self.memory_limit_mb,
                             max_output_chars=self.max_output_chars, max_frames_per_step=self.max_frames_per_step,
                             max_frames_per_episode=self.max_frames_per_episode,
                             max_frame_pixels=self.max_frame_pixels)


class ImageEnvConfig(EnvConfig):
    """``PyVisionImage-v0``: the input images are in the first observation and in the interpreter."""

    image_max_pixels: int | None = Field(None, ge=64, description="Input images above this are downscaled in "
                                         "the observation (the interpreter keeps the originals).")


class VideoEnvConfig(EnvConfig):
    """``PyVisionVideo-v0``: no frame at reset; the model samples the frames it needs with code."""

    uniform_baseline_frames: int = Field(32, ge=1, description="Frames of the uniform-sampling baseline that "
                                         "info['visual_tokens_uniform'] prices, to show the on-demand saving.")
