"""Shared fixtures of the verl tests (run in the verl venv: ``.venv-verl/bin/python -m pytest tests/verl``).

A tiny random Qwen2.5-VL with its tokenizer and image processor, verl's real trainer config composed
with Hydra, PyVision dataset rows, and two generate servers with the signature of verl's
``LLMServerClient.generate``: :class:`ScriptedServer` plays given turns (so real code from the
synthetic suites runs and the answer, reward and masks can be checked exactly) and
:class:`TinyModelServer` samples from the tiny model as the ``transformers_cpu`` rollout server does
(junk, by design).

Fixtures for other verl tests are appended below the ones here.
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import pytest
import verl
from omegaconf import DictConfig, OmegaConf
from tiny_models import tiny_qwen25_vl
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
from verl.experimental.agent_loop.agent_loop import AgentLoopWorker, DictConfigWrap, ToolListWrap
from verl.utils import hf_processor
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.workers.rollout.replica import TokenOutput

from pyvision_agent.verl.cpu import Qwen2_5_VLProcessor
from pyvision_agent.verl.data import task_to_row, write_parquet
from pyvision_agent.verl.transformers_rollout import sample
from pyvision_env.tasks import Task

REPO = Path(__file__).resolve().parents[2]
AGENT_LOOP_YAML = REPO / "pyvision_agent" / "verl" / "agent_loop.yaml"


@pytest.fixture(scope="session")
def tiny_vl_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_qwen25_vl(tmp_path_factory.mktemp("tiny-qwen25-vl"))


@pytest.fixture(scope="session")
def tokenizer(tiny_vl_path: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_vl_path)


@pytest.fixture(scope="session")
def processor(tiny_vl_path: Path) -> Qwen2_5_VLProcessor:
    """The processor as verl's workers load it (``hf_processor``, which binds the model's M-RoPE methods),
    with :mod:`pyvision_agent.verl.cpu` loaded: Qwen2.5-VL's own processor needs torchvision for its
    video part, which has no CPU build here, so that module registers an image-only one."""
    proc = hf_processor(str(tiny_vl_path))
    assert isinstance(proc, Qwen2_5_VLProcessor) and proc.get_rope_index is not None
    return proc


@pytest.fixture(scope="session")
def tiny_vl_model(tiny_vl_path: Path) -> Qwen2_5_VLForConditionalGeneration:
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_vl_path).eval()


@pytest.fixture(scope="session")
def compose_config(tiny_vl_path: Path) -> Callable[..., DictConfig]:
    """verl's ``ppo_trainer`` config with the tiny model and the given Hydra overrides."""
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")

    def compose(*overrides: str) -> DictConfig:
        with hydra.initialize_config_dir(config_dir=config_dir, version_base=None):
            return hydra.compose(config_name="ppo_trainer", overrides=[
                f"actor_rollout_ref.model.path={tiny_vl_path}",
                f"actor_rollout_ref.rollout.agent.agent_loop_config_path={AGENT_LOOP_YAML}",
                "actor_rollout_ref.rollout.prompt_length=2048",
                "actor_rollout_ref.rollout.response_length=2048",
                *overrides])

    return compose


@pytest.fixture(scope="session")
def make_loop(compose_config: Callable[..., DictConfig], tokenizer: Any, processor: Any) -> Callable[..., Any]:
    """Build a ``PyVisionAgentLoop`` exactly as verl's ``AgentLoopWorker._run_agent_loop`` does: the whole
    entry of ``agent_loop.yaml`` (``name`` included; ``yaml`` keys merged in) through ``hydra.utils.instantiate``."""
    base = compose_config()

    def make(server: Any, *, yaml: dict[str, Any] | None = None, config: DictConfig | None = None) -> Any:
        entries = OmegaConf.load(AGENT_LOOP_YAML)
        (entry,) = [e for e in entries if e.name == "pyvision_agent"]
        entry = OmegaConf.merge(entry, yaml or {})
        trainer_config = config if config is not None else base
        return hydra.utils.instantiate(
            config=entry, trainer_config=DictConfigWrap(config=trainer_config), server_manager=server,
            tokenizer=tokenizer, processor=processor, hf_model_type="qwen2_5_vl", dataset_cls=RLHFDataset,
            data_config=DictConfigWrap(trainer_config.data), tools=ToolListWrap([]))

    return make


@pytest.fixture(scope="session")
def postprocess(tokenizer: Any, processor: Any) -> Callable[..., Any]:
    """verl's own per-trajectory postprocessing (padding, multi-modal inputs, M-RoPE positions and, given
    reward-worker handles, the streaming reward) on an ``AgentLoopWorker`` that holds only what that
    method reads: ``postprocess(output, row, config, reward_handles=None)``."""

    def run(output: Any, row: dict[str, Any], config: DictConfig, reward_handles: list[Any] | None = None) -> Any:
        worker = AgentLoopWorker.__new__(AgentLoopWorker)  # its __init__ starts Ray-side machinery
        worker.rollout_config = config.actor_rollout_ref.rollout
        worker.tokenizer, worker.processor, worker.mm_processor_kwargs = tokenizer, processor, {}
        worker.reward_loop_worker_handles, worker.distillation_enabled = reward_handles, False
        return asyncio.run(worker._agent_loop_postprocess(output, False, **row))

    return run


@pytest.fixture()
def make_row(tmp_path: Path, compose_config: Callable[..., DictConfig], tokenizer: Any, processor: Any
             ) -> Callable[..., dict[str, Any]]:
    """A dataset row exactly as the trainer hands it to an agent loop: written by
    ``pyvision_agent.verl.data`` to parquet, read back by verl's ``RLHFDataset`` (its non-tensor fields;
    the worker takes ``agent_name`` out to pick the loop)."""
    data_config = compose_config().data

    def make(task: Task, index: int = 0) -> dict[str, Any]:
        path = write_parquet([task_to_row(task, index=index, split="train", image_dir=tmp_path / "images")],
                             tmp_path / f"{task.id}-{index}.parquet")
        row = RLHFDataset(str(path), tokenizer, data_config, processor)[0]
        assert row.pop("agent_name") == "pyvision_agent"
        del row["dummy_tensor"]
        return row

    return make


class ScriptedServer:
    """Plays given turns through verl's ``generate`` signature and records every call, so tests can
    check what the loop sent turn by turn.

    A turn is text (tokenised with the model's tokenizer, cut after the first stop string as a server
    does), raw token ids, or an exception to raise. ``max_tokens`` is honoured.
    """

    def __init__(self, tokenizer: Any, turns: list[str | list[int] | BaseException]) -> None:
        self.tokenizer, self.turns = tokenizer, turns
        self.calls: list[dict[str, Any]] = []
        self._turn_of: dict[str, int] = defaultdict(int)

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any],
                       image_data: list[Any] | None = None, video_data: list[Any] | None = None,
                       **kwargs: Any) -> TokenOutput:
        k = self._turn_of[request_id]
        self._turn_of[request_id] += 1
        turn = self.turns[min(k, len(self.turns) - 1)]
        if isinstance(turn, BaseException):
            raise turn
        if isinstance(turn, str):
            for stop in sampling_params.get("stop", ()):
                if stop in turn:
                    turn = turn[:turn.index(stop) + len(stop)]
            turn = self.tokenizer.encode(turn, add_special_tokens=False)
        ids = list(turn)[:sampling_params["max_tokens"]]
        logprobs = [-0.25 - 0.001 * i for i in range(len(ids))] if sampling_params.get("logprobs") else None
        self.calls.append({"request_id": request_id, "prompt_ids": list(prompt_ids), "images": list(image_data or []),
                           "sampling_params": dict(sampling_params), "token_ids": ids, "log_probs": logprobs})
        await asyncio.sleep(0)
        return TokenOutput(token_ids=ids, log_probs=logprobs, stop_reason="completed")


class Scripts:
    """The ``scripted`` fixture: ``scripted([turn, ...])`` makes a :class:`ScriptedServer`; ``code`` and
    ``answer`` write turns the way a PyVision model does."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, turns: list[str | list[int] | BaseException]) -> ScriptedServer:
        return ScriptedServer(self.tokenizer, turns)

    @staticmethod
    def code(code: str) -> str:
        """A code turn, ending where generation stops (at ``</code>``)."""
        return f"Let me compute this with code.\n<code>\n```python\n{code.strip()}\n```\n</code>"

    @staticmethod
    def answer(answer: str) -> str:
        """An answer turn, ending with the end-of-turn token as a model's does."""
        return f"<answer>\\boxed{{{answer}}}</answer><|im_end|>"


@pytest.fixture(scope="session")
def scripted(tokenizer: Any) -> Scripts:
    return Scripts(tokenizer)


class TinyModelServer:
    """Samples from the tiny Qwen2.5-VL as the ``transformers_cpu`` rollout server does (its ``sample``),
    given the ids and images the loop sends, and records every call.

    The prompt ids already hold one expanded placeholder run per image, so the model's forward checks the
    loop's image/token lockstep for real (it raises when features and placeholders differ).
    """

    def __init__(self, model: Any, processor: Any, *, seed: int = 0) -> None:
        self.model, self.processor, self.seed = model, processor, seed
        self.calls: list[dict[str, Any]] = []

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any],
                       image_data: list[Any] | None = None, video_data: list[Any] | None = None,
                       **kwargs: Any) -> TokenOutput:
        params = dict(sampling_params)
        ids, logprobs = await asyncio.to_thread(sample, self.model, self.processor, prompt_ids, image_data, params,
                                                max_tokens=int(params.pop("max_tokens")),
                                                seed=self.seed + len(self.calls))
        self.calls.append({"request_id": request_id, "prompt_ids": list(prompt_ids), "images": list(image_data or []),
                           "sampling_params": dict(sampling_params), "token_ids": ids, "log_probs": logprobs})
        return TokenOutput(token_ids=ids, log_probs=logprobs, stop_reason="completed")


@pytest.fixture(scope="session")
def tiny_server(tiny_vl_model: Any, processor: Any) -> Callable[..., TinyModelServer]:
    """``tiny_server(seed=...)`` makes a :class:`TinyModelServer` over the session's tiny model."""
    return lambda seed=0: TinyModelServer(tiny_vl_model, processor, seed=seed)
