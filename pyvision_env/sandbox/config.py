"""Per-episode limits of the sandbox, validated by pydantic (unknown keys are errors).

Isolation is chosen per :class:`~pyvision_env.sandbox.Sandbox` (it is a property of the zygote), not here."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SandboxConfig(BaseModel):
    """Per-episode interpreter limits. Every field has a default that is safe for RL rollouts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    exec_timeout_s: float = Field(30.0, gt=0, description="Wall-clock deadline of one code execution.")
    interrupt_grace_s: float = Field(
        0.2, ge=0, description="After the deadline, time given to a SIGINT (which keeps the state) "
        "before the worker is killed and replaced by a fresh one.")
    memory_limit_mb: int = Field(2048, ge=64, description="Address space the model's code may add to "
                                 "the warm worker (RLIMIT_AS relative to the worker's own size).")
    max_output_chars: int = Field(8000, ge=64, description="stdout and stderr kept per execution, "
                                  "head and tail, with a marker saying how much was cut.")
    max_frames_per_step: int = Field(8, ge=0, description="Frames kept per execution; more are dropped "
                                     "with a note.")
    max_frames_per_episode: int = Field(32, ge=0, description="Frames kept over the whole episode.")
    max_frame_pixels: int = Field(2_000_000, ge=64, description="Larger frames are downscaled (aspect "
                                  "kept) with a note.")
    max_file_mb: int = Field(256, ge=1, description="Largest file the code may write (RLIMIT_FSIZE); also "
                             "bounds captured output.")
    max_scratch_mb: int = Field(512, ge=1, description="Size of the episode's scratch tmpfs (its working "
                                "directory and /tmp) where the sandbox has a private root; its pages also "
                                "count against the episode's memory cgroup.")
    max_open_files: int = Field(512, ge=32, description="RLIMIT_NOFILE of the worker.")
    cpu_limit_cores: float = Field(1.0, gt=0, description="CPU the episode's processes may use together, "
                                   "in cores (a cgroup quota where the cpu controller is available).")
    max_processes: int = Field(301, ge=301, description="PIDs in the episode's PID namespace (the "
                               "kernel's minimum is 301); RLIMIT_NPROC where there is no PID namespace.")
