"""verl 0.9.1's trainer on a machine without a GPU: what stock verl lacks, added through its own hooks.

Only for CPU runs (the smoke run of the recipes, its CI test); a GPU run never loads this module.
Load it in every verl process with verl's external-module hook, and join the training workers'
process group with Ray's worker setup hook::

    VERL_USE_EXTERNAL_MODULES=pyvision_agent.verl.cpu VERL_PLATFORM=cpu \\
    python -m verl.trainer.main_ppo ... \\
        +ray_kwargs.ray_init.runtime_env.worker_process_setup_hook=pyvision_agent.verl.cpu.join_process_group

Importing it registers, without touching verl's code:

- :class:`PlatformCPU` as verl platform ``cpu`` (verl ships nvidia, npu and rocm; with none available it
  falls back to nvidia and every ``torch.cuda`` call fails);
- verl's FSDP engines for device ``cpu`` (they are registered for cuda and npu only);
- the transformers rollout server of :mod:`pyvision_agent.verl.transformers_rollout` as rollout
  ``transformers_cpu`` (vLLM's CPU build cannot serve a vision-language model without torchvision);
- where torchvision is missing (no CPU build exists for this torch), an image-only Qwen2.5-VL processor
  (:class:`Qwen2_5_VLProcessor`), so ``AutoProcessor`` loads one instead of failing on the video part.

The rest is configuration (``recipes/*/run_smoke_cpu.sh``): logical Ray CPUs and one logical GPU (verl
schedules its workers on GPUs), ``fsdp2``, sdpa attention, no remove-padding.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from datetime import timedelta
from typing import Any

import torch
import transformers
from verl.plugin.platform import PlatformBase, PlatformRegistry
from verl.workers.rollout import base as rollout_base
from verl.workers.rollout.replica import RolloutReplicaRegistry

from .transformers_rollout import ROLLOUT_NAME, TransformersReplica


class _CPUDevice:
    """What verl calls on ``torch.cuda`` (its "device module"), answered for the CPU.

    ``torch.cpu`` has only part of that API; the memory and cache calls have nothing to do on a CPU.
    ``current_device`` is ``"cpu"`` rather than an index: verl moves tensors with ``.to(current_device())``
    and ``.to(0)`` would mean ``cuda:0``.
    """

    Event, Stream = torch.cpu.Event, torch.cpu.Stream
    stream, current_stream = torch.cpu.stream, torch.cpu.current_stream

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def current_device() -> str:
        return "cpu"

    @staticmethod
    def get_device_name(*args: Any) -> str:
        return "cpu"

    @staticmethod
    def synchronize(device: Any = None) -> None:
        torch.cpu.synchronize()

    @staticmethod
    def mem_get_info(*args: Any) -> tuple[int, int]:
        """(free, total) bytes of host memory."""
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page

    @staticmethod
    def get_rng_state(*args: Any) -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, *args: Any) -> None:
        torch.set_rng_state(state)

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    manual_seed_all = manual_seed

    @staticmethod
    def _nothing(*args: Any, **kwargs: Any) -> None:
        return None

    set_device = empty_cache = ipc_collect = set_per_process_memory_fraction = _nothing

    @staticmethod
    def _zero(*args: Any, **kwargs: Any) -> int:
        return 0

    memory_allocated = memory_reserved = max_memory_allocated = max_memory_reserved = _zero


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    """verl's platform interface for the CPU (``VERL_PLATFORM=cpu``): gloo, no memory to manage.

    Ray still schedules verl's workers on ``GPU`` resources: start Ray with logical GPUs (one per
    training worker), which are only slots here.
    """

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> Any:
        return _CPUDevice

    def is_available(self) -> bool:
        return True

    def current_device(self) -> Any:  # verl's annotation says int; see _CPUDevice.current_device
        return _CPUDevice.current_device()

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        torch.cpu.synchronize()

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[None, None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"  # what Ray sets for the logical GPUs

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> None:
        return None


def join_process_group() -> None:
    """Ray worker setup hook: a training worker joins its gloo process group before verl would.

    verl builds the backend string ``cpu:gloo,<device>:<backend>``, which for the CPU reads
    ``cpu:gloo,cpu:gloo`` and torch rejects (duplicate device type). verl initialises the group only
    when none exists, so its training workers join plain ``gloo`` here, with the rank, world size and
    master address verl gives them in their environment. Other Ray workers are left alone.
    """
    if os.environ.get("WG_BACKEND") != "ray" or "MASTER_ADDR" not in os.environ:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                                timeout=timedelta(minutes=30))


def _register_engines() -> None:
    """verl's FSDP engines, also for device ``cpu`` (verl registers them for cuda and npu)."""
    from verl.workers.engine import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    for model_type, engine in (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
        if "cpu" not in EngineRegistry._engines.get(model_type, {}).get("fsdp2", {}):
            EngineRegistry.register(model_type=model_type, backend=["fsdp", "fsdp2"], device="cpu")(engine)


class Qwen2_5_VLProcessor(transformers.Qwen2_5_VLProcessor):  # noqa: N801 (the name verl matches, see below)
    """Qwen2.5-VL's processor without its video processor, which needs torchvision (no CPU build here).

    Everything an image episode uses (chat template, placeholder expansion, pixel values, grid sizes) is
    the real class's code; asking it for videos fails. It keeps the class name ``Qwen2_5_VLProcessor``
    because verl binds the model's M-RoPE index function by that name
    (``verl/utils/tokenizer/tokenizer.py``, ``hf_processor``).
    """

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None,
                 **kwargs: Any) -> None:
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        transformers.ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
        self.video_processor = None


def _register_processor() -> None:
    if importlib.util.find_spec("torchvision") is None:
        transformers.AutoProcessor.register(transformers.Qwen2_5_VLConfig, Qwen2_5_VLProcessor, exist_ok=True)


def _register_rollout() -> None:
    """The transformers server as rollout ``transformers_cpu``, in both of verl's rollout registries: the
    replica (the server) and the adapter that the training worker uses to push weights to it."""
    RolloutReplicaRegistry.register(ROLLOUT_NAME, lambda: TransformersReplica)
    adapter = "pyvision_agent.verl.transformers_rollout.TransformersServerAdapter"
    rollout_base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = adapter  # verl has no register function for it


_register_engines()
_register_processor()
_register_rollout()
