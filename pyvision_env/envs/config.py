"""The config of each env: the keyword arguments of ``gym.make`` (unknown keys and bad values fail there).

A *profile* sets the defaults of a protocol in one word: ``pyvision`` (ours) or ``pyvision_rl`` (what
the released PyVision-RL models were trained and evaluated with). A profile only fills settings the
caller did not give, so each stays overridable.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..protocol import get_protocol
from ..rewards import LLMJudgeConfig
from ..sandbox import SandboxConfig
from ..visual_tokens import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS, get_rule

Profile = Literal["pyvision", "pyvision_rl"]


class EnvConfig(BaseModel):
    """Settings shared by both envs. Defaults follow PyVision-RL where it has one."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        "pyvision": {},
        "pyvision_rl": {"dialect": "pyvision_rl", "max_turns": 30, "end_on_error": True, "end_on_format_error": True,
                        "mra_reward": "graded"},
    }
    """The defaults each profile sets (on top of the field defaults)."""

    profile: Profile = Field("pyvision", description="pyvision (ours) or pyvision_rl (PyVision-RL's protocol: "
                             "their reply layout, a malformed turn or an error ends the episode, 30 turns, "
                             "graded MRA, the user turn from prompt_template, no system prompt).")
    prompt_template: str | None = Field(None, description="profile pyvision_rl: the user-turn template, "
                                        "'PATH.json#KEY' (their rl_system_prompt_template.json layout) or a text "
                                        "file; None: our own wording.")
    tasks: Any = Field("synthetic", description="A list of task dicts, a path to a JSONL/JSON/parquet file, or "
                       "a synthetic suite name ('synthetic' picks the env's own modality).")
    max_turns: int = Field(10, ge=1, description="Model turns per episode; the episode is truncated after.")
    max_turn_chars: int = Field(1_000_000, ge=1, description="Characters a turn may have; a longer one gets a "
                                "format-error observation and nothing in it runs.")
    exec_timeout_s: float = Field(30.0, gt=0, description="Deadline of one code execution.")
    memory_limit_mb: int = Field(2048, ge=64, description="Memory the episode's code may add to its interpreter.")
    max_output_chars: int = Field(8000, ge=64, description="Interpreter text kept per step (head and tail).")
    max_frames_per_step: int | None = Field(None, ge=0, description="Frames returned per step; None: as many as "
                                            "the episode's budget (max_frames_per_episode) has left.")
    max_frames_per_episode: int = Field(32, ge=0, description="Frames returned per episode (PyVision-RL: 32).")
    max_frame_pixels: int = Field(2_000_000, ge=64, description="Frames above this are downscaled.")
    end_on_error: bool = Field(False, description="End the episode on a code error, timeout or crash (the "
                               "paper's training behaviour); by default the model sees the traceback and goes on.")
    end_on_format_error: bool = Field(False, description="End the episode on a turn with neither code nor answer "
                                      "(PyVision-RL's ERROR_IN_ACTION); by default the model gets a hint and goes on.")
    tool_reward_per_call: float = Field(0.1, ge=0, description="Added per executed code block when the answer "
                                        "is right (failed executions count).")
    tool_reward_cap: float | None = Field(None, ge=0, description="Upper bound of the tool reward (None: no cap).")
    format_error_reward: float = Field(0.0, le=0, description="Added once per malformed turn (0: none, as in "
                                       "PyVision-RL, where malformed turns only cost turns).")
    step_reward: float = Field(0.0, description="Reward of every step that does not end the episode.")
    dialect: str = Field("pyvision", description="Turn protocol: pyvision, pyvision_rl, fenced or tool_call.")
    system_prompt: str | None = Field(None, description="Replaces the built-in system prompt (profile pyvision_rl "
                                      "sends none unless this is given).")
    image_placeholder: str = Field("<image>", min_length=1, description="Text standing for one image.")
    visual_token_rule: str = Field("qwen2.5-vl", description="How visual tokens are estimated.")
    visual_token_min_pixels: int = Field(QWEN_MIN_PIXELS, ge=1)
    visual_token_max_pixels: int = Field(QWEN_MAX_PIXELS, ge=1)
    mra_reward: Literal["graded", "binary"] = Field("binary", description="How an 'mra' task pays: binary (1 "
                                                    "from an MRA score of 0.5) or graded (the score, as PyVision-RL).")
    judge: Literal["rule", "llm"] = Field("rule", description="rule: the judge of the task's answer_type; "
                                          "llm: an OpenAI-compatible judge model (llm_judge settings).")
    llm_judge: LLMJudgeConfig | None = None
    isolation: Literal["auto", "strict", "none"] = Field(
        "auto", description="Sandbox isolation: auto (the strongest this kernel allows, warning about gaps), "
        "strict (refuse to start with a gap), none (debugging only). See the README's threat model.")
    sandbox_backend: Literal["local", "ray"] = Field(
        "local", description="Where the episodes' interpreters run: local (forked from this process's zygote) or "
        "ray (on actors spread over the nodes of the running Ray cluster; pip install 'pyvision[ray]').")
    ray_node_resource: str | None = Field(
        None, min_length=1, description="With sandbox_backend='ray': only the nodes offering this Ray resource "
        "run interpreters (e.g. CPU-only nodes started with --resources='{\"pyvision_sandbox\": 1}').")

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "prompt_style" in data:
            raise ValueError("prompt_style was folded into profile (0.3.0): use profile='pyvision_rl' for the "
                             "released PyVision-RL models (their protocol; prompt_template=... for their exact "
                             "prompt), or leave it out for ours")
        profile = data.get("profile", "pyvision")
        if profile not in cls.PROFILES:
            return data  # the Literal check names the bad value
        return {**cls.PROFILES[profile], **data}

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
        if self.ray_node_resource is not None and self.sandbox_backend != "ray":
            raise ValueError("ray_node_resource is only used with sandbox_backend='ray'")
        if self.prompt_template is not None and self.profile != "pyvision_rl":
            raise ValueError("prompt_template is the user turn of profile='pyvision_rl'; set that profile too")

    def sandbox_config(self) -> SandboxConfig:
        per_step = self.max_frames_per_episode if self.max_frames_per_step is None else self.max_frames_per_step
        return SandboxConfig(exec_timeout_s=self.exec_timeout_s, memory_limit_mb=self.memory_limit_mb,
                             max_output_chars=self.max_output_chars, max_frames_per_step=per_step,
                             max_frames_per_episode=self.max_frames_per_episode,
                             max_frame_pixels=self.max_frame_pixels)


class ImageEnvConfig(EnvConfig):
    """``PyVisionImage-v0``: the input images are in the first observation and in the interpreter."""

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        **EnvConfig.PROFILES,
        "pyvision_rl": {**EnvConfig.PROFILES["pyvision_rl"], "image_min_pixels": 3136, "image_max_pixels": 2_000_000},
    }

    image_max_pixels: int | None = Field(None, ge=64, description="Input images above this are downscaled in "
                                         "the observation (the interpreter keeps the originals).")
    image_min_pixels: int | None = Field(None, ge=1, description="Input images below this are upscaled in the "
                                         "observation (the interpreter keeps the originals).")

    def model_post_init(self, _context: Any) -> None:
        super().model_post_init(_context)
        if self.image_min_pixels and self.image_max_pixels and self.image_min_pixels > self.image_max_pixels:
            raise ValueError(f"image_min_pixels ({self.image_min_pixels}) is above image_max_pixels "
                             f"({self.image_max_pixels})")


class VideoEnvConfig(EnvConfig):
    """``PyVisionVideo-v0``: no frame at reset; the model samples the frames it needs with code."""

    uniform_baseline_frames: int = Field(32, ge=1, description="Frames of the uniform-sampling baseline that "
                                         "info['visual_tokens_uniform'] prices, to show the on-demand saving.")
