"""Shared pieces of the vLLM-venv tests (run them with ``.venv-vllm/bin/python -m pytest tests/vllm``)."""

from __future__ import annotations

from pathlib import Path

import pytest

# What vLLM's CPU backend needs on a small shared machine: a fixed KV cache (its default takes a share of
# the machine's free memory and fails when other processes hold some), no torch.compile (minutes on 2
# cores), float32 (so recorded and recomputed log-probs agree closely).
_CPU_ENGINE_KWARGS = {"kv_cache_memory_bytes": 128 << 20, "max_model_len": 4096, "enforce_eager": True,
                     "dtype": "float32", "disable_log_stats": True}


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random text Qwen2 (head_dim 64, as vLLM's CPU attention needs), built once per session."""
    from tiny_models import tiny_qwen2_text

    return tiny_qwen2_text(tmp_path_factory.mktemp("tiny-qwen2-text"))


@pytest.fixture(scope="session")
def cpu_engine_kwargs() -> dict:
    """``vllm.AsyncEngineArgs`` fields for this machine (the server fixture turns them into CLI flags)."""
    return dict(_CPU_ENGINE_KWARGS)
