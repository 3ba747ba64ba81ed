"""A rollout server on Hugging Face transformers behind verl's rollout interface, for machines without a GPU.

verl serves rollouts with vLLM, SGLang or TensorRT-LLM; none of them serves a vision-language model on
this CPU (vLLM's CPU build needs torchvision for its multimodal processors). This module gives verl the
same three pieces they do, registered as rollout ``transformers_cpu`` by :mod:`pyvision_agent.verl.cpu`
(only where no GPU exists):

- :class:`TransformersServer`, the server (a Ray actor): token-in-token-out ``generate`` with the
  signature of vLLM's server (prompt ids with expanded image placeholders, PIL images, vLLM-style
  sampling parameters, log-probs), sampled with ``model.generate``;
- :class:`TransformersReplica`, verl's ``RolloutReplica`` that starts one server per replica;
- :class:`TransformersServerAdapter`, verl's ``BaseRollout`` in the training worker, which sends the
  trained weights to the server after every step (verl's ``naive`` weight sync).

It is slow (one request at a time, no batching) and meant for tiny models: the CPU smoke run of the
recipes and its test. ``actor_rollout_ref.rollout.engine_kwargs.transformers_cpu.log_path`` makes the
server append one JSON line per request (prompt and output token ids, the weights' step and digest),
which is how the smoke test checks what the trainer did against what was served.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

import ray
import torch
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.tokenizer import get_processor_token_id
from verl.workers.config import HFModelConfig, RolloutConfig
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

ROLLOUT_NAME = "transformers_cpu"


def server_name(replica_rank: int) -> str:
    """The Ray actor name of a replica's server (how the training worker finds it)."""
    return f"{ROLLOUT_NAME}_server_{replica_rank}"


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """A digest of a model's weights (names, dtypes and bytes), to tell weight versions apart."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def sample(model: Any, processor: Any, prompt_ids: list[int], images: list[Any] | None, params: dict[str, Any],
           *, max_tokens: int, seed: int) -> tuple[list[int], list[float] | None]:
    """Sample one continuation of ``prompt_ids`` as a vLLM server would; returns (token ids, log-probs or None).

    ``prompt_ids`` hold one expanded placeholder run per image, so the model's forward checks that
    images and placeholder tokens match; the placeholder tokens are marked as image tokens, without
    which transformers gives them text positions instead of Qwen2.5-VL's M-RoPE ones (and the rollout
    would sample from another model than the one verl trains). vLLM's parameters map onto ``generate``:
    ``top_k=-1`` is no top-k, ``temperature=0`` is greedy, ``stop`` strings end the output after the
    string (as vLLM's token ids do), log-probs are those of the sampling distribution. Nothing else
    shapes it: ``model.generation_config`` must carry no sampling defaults (see :class:`TransformersServer`).
    """
    input_ids = torch.tensor([prompt_ids])
    inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if images:
        pixels = processor.image_processor(images=images, return_tensors="pt")
        image_token = get_processor_token_id(processor, "image")
        inputs |= {"pixel_values": pixels["pixel_values"], "image_grid_thw": pixels["image_grid_thw"],
                   "mm_token_type_ids": (input_ids == image_token).int()}
    temperature = float(params.get("temperature", 1.0))
    top_k = int(params.get("top_k", -1))
    sampling = ({"do_sample": True, "temperature": temperature, "top_p": float(params.get("top_p", 1.0)),
                 "top_k": max(top_k, 0)}  # transformers: top_k=0 is no top-k (None would mean its default, 50)
                if temperature > 0 else {"do_sample": False})
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            **inputs, **sampling, max_new_tokens=max_tokens,
            repetition_penalty=float(params.get("repetition_penalty", 1.0)),
            stop_strings=list(params.get("stop") or ()) or None, tokenizer=processor.tokenizer,
            eos_token_id=None if params.get("ignore_eos") else model.generation_config.eos_token_id,
            output_scores=True, return_dict_in_generate=True)
    ids = out.sequences[0, len(prompt_ids):].tolist()
    if not params.get("logprobs"):
        return ids, None
    scores = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    return ids, scores[0, :len(ids)].tolist()


class TransformersServer:
    """One replica's server: the model in host memory, requests served one at a time.

    The weights are the training worker's after every :meth:`update_weights` (the model files only
    give the architecture and the first weights). Lifecycle calls of verl (sleep, wake up, cache
    resets, aborts) have nothing to free or abort here and return at once.
    """

    def __init__(self, config: RolloutConfig, model_config: HFModelConfig, replica_rank: int = 0) -> None:
        from transformers import AutoModelForImageTextToText, GenerationConfig

        self.config = omega_conf_to_dataclass(config)
        self.model_config = omega_conf_to_dataclass(model_config)
        self.replica_rank = replica_rank
        self.model = AutoModelForImageTextToText.from_pretrained(
            self.model_config.local_path, dtype=torch.float32, attn_implementation="sdpa").eval()
        # the checkpoint's sampling defaults (Qwen2.5-VL ships top_k=1, repetition_penalty=1.05) would reshape
        # the distribution behind verl's back: keep only what ends a turn
        gen = self.model.generation_config
        self.model.generation_config = GenerationConfig(eos_token_id=gen.eos_token_id, pad_token_id=gen.pad_token_id)
        self.processor = self.model_config.processor
        if self.processor is None:
            raise ValueError(f"{self.model_config.local_path} has no multimodal processor; the transformers_cpu "
                             "rollout serves vision-language models (load pyvision_agent.verl.cpu for Qwen2.5-VL)")
        self.max_model_len = self.config.max_model_len or self.config.prompt_length + self.config.response_length
        self.global_steps: int | None = None
        self.digest = weights_digest(self.model.state_dict())
        self.requests = 0
        self._lock = asyncio.Lock()
        options = (self.config.engine_kwargs or {}).get(ROLLOUT_NAME) or {}
        self.log_path: str | None = options.get("log_path")

    async def generate(self, prompt_ids: list[int], sampling_params: dict[str, Any], request_id: str,
                       image_data: list[Any] | None = None, video_data: list[Any] | None = None,
                       mm_processor_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> TokenOutput:
        """vLLM's ``generate``: sample from ``prompt_ids`` (and images) with vLLM-style ``sampling_params``."""
        if video_data:
            raise ValueError("the transformers_cpu rollout serves images only; this request holds videos")
        params = dict(sampling_params)
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room within max_model_len "
                             f"{self.max_model_len}")
        max_tokens = max(1, min(int(params.pop("max_tokens", self.config.response_length)), room))
        async with self._lock:
            self.requests += 1
            seed = self.config.seed * 1_000_003 + self.replica_rank * 10_007 + self.requests
            ids, logprobs = await asyncio.to_thread(sample, self.model, self.processor, list(prompt_ids),
                                                    image_data, params, max_tokens=max_tokens, seed=seed)
            record = {"request_id": request_id, "global_steps": self.global_steps, "weights": self.digest,
                      "prompt_ids": list(prompt_ids), "token_ids": ids, "n_images": len(image_data or ())}
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as log:
                log.write(json.dumps(record) + "\n")
        return TokenOutput(token_ids=ids, log_probs=logprobs, stop_reason="completed",
                           extra_fields={"global_steps": self.global_steps})

    async def update_weights(self, state: dict[str, torch.Tensor], global_steps: int | None = None) -> str:
        """Load the training worker's weights (HF parameter names); returns their digest.

        Every parameter and buffer of the model must be given, and nothing else: a partial or misnamed
        update would leave the rollout serving a mix of old and new weights.
        """
        own = self.model.state_dict()
        missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        if missing or unexpected:
            raise ValueError(f"weight update does not match the served model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        async with self._lock:
            self.model.load_state_dict(state, strict=True)
            self.global_steps = global_steps
            self.digest = weights_digest(self.model.state_dict())
        return self.digest

    async def wake_up(self, tags: list[str] | None = None) -> None:
        return None

    async def sleep(self) -> None:
        return None

    async def clear_kv_cache(self) -> None:
        return None

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def abort_all_requests(self, reject_request: bool = False, **kwargs: Any) -> dict[str, Any]:
        return {"aborted_count": 0, "request_ids": []}

    async def resume_generation(self) -> None:
        return None

    async def start_profile(self, **kwargs: Any) -> None:
        return None

    async def stop_profile(self) -> None:
        return None

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps


class TransformersReplica(RolloutReplica):
    """verl's rollout replica for ``transformers_cpu``: one :class:`TransformersServer` actor."""

    async def launch_servers(self) -> None:
        server = ray.remote(TransformersServer).options(
            name=server_name(self.replica_rank), num_cpus=1, max_concurrency=self.max_concurrency,
        ).remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        self.servers = [server]
        self._server_handle = server
        self._server_address = server_name(self.replica_rank)  # the load balancer's key; there is no HTTP server


class TransformersServerAdapter(BaseRollout):
    """The training worker's side of ``transformers_cpu``: sends the trained weights to its replica's server.

    Every rank of the replica consumes the weight generator (gathering a sharded parameter is a
    collective); the replica's first rank sends them.
    """

    def __init__(self, config: RolloutConfig, model_config: HFModelConfig, device_mesh: Any = None,
                 replica_rank: int = -1) -> None:
        super().__init__(config, model_config, device_mesh)
        world = (self.config.tensor_model_parallel_size * self.config.data_parallel_size
                 * self.config.pipeline_model_parallel_size)
        rank = int(os.environ.get("RANK", "0"))
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self.rollout_rank = rank % world
        self.is_leader_rank = self.rollout_rank == 0

    async def resume(self, tags: list[str]) -> None:
        return None  # the server keeps its weights and has no cache to rebuild

    async def release(self) -> None:
        return None

    async def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]], global_steps: int | None = None,
                             wire_format: str = "named_tensors", peft_config: Any = None, **kwargs: Any) -> None:
        if wire_format != "named_tensors":
            raise NotImplementedError(f"the transformers_cpu rollout takes full weights (checkpoint_engine.backend="
                                      f"naive), got wire_format={wire_format!r}")
        if peft_config is not None:
            raise NotImplementedError("the transformers_cpu rollout takes merged weights: set "
                                      "actor_rollout_ref.model.lora.merge=true for LoRA")
        state = {name: tensor.detach().to("cpu", copy=True) for name, tensor in weights}
        if self.is_leader_rank:
            await ray.get_actor(server_name(self.replica_rank)).update_weights.remote(state, global_steps)
