"""Policies: what turns a model (or a script) plays in the PyVision envs.

Model-backed policies import their heavy dependencies (openai, torch, vllm) lazily, so
``from pyvision_agent.policies import ScriptedPolicy`` stays light.
"""

from __future__ import annotations

import inspect
from typing import Any

from pyvision_env.errors import did_you_mean

from .base import ContextLengthError, Policy, PolicyRequestError
from .scripted import ScriptedPolicy

POLICY_KINDS = ("openai", "transformers", "vllm", "scripted")


def make_policy(kind: str, *, model: str | None = None, base_url: str | None = None, concurrency: int = 8,
                options: dict[str, Any] | None = None, **sampling: Any) -> Policy:
    """The policy ``pyvision eval --policy KIND`` plays with. ``sampling`` holds temperature, top_p and
    max_tokens; ``options`` any other constructor argument of that policy (e.g. vLLM's ``engine_kwargs``,
    the scripted policy's ``turns``). An option the policy does not take is refused naming the closest one."""
    options = options or {}
    if kind not in POLICY_KINDS:
        raise ValueError(f"unknown policy {kind!r}{did_you_mean(kind, POLICY_KINDS)}; choose one of "
                         f"{', '.join(POLICY_KINDS)}")
    if kind == "scripted":
        if sampling or model or base_url:
            raise ValueError("the scripted policy plays the tasks' solutions, or the turns given as --policy-config "
                             "'{\"turns\": [...]}': it takes no model, server or sampling settings")
        return _build(ScriptedPolicy, kind, **options)
    if not model:
        raise ValueError(f"the {kind} policy needs --model")
    if kind == "openai":
        from .openai import OpenAIPolicy

        return _build(OpenAIPolicy, kind, model, base_url=base_url,
                      **{"max_concurrency": concurrency, **sampling, **options})
    if base_url:
        raise ValueError(f"--base-url is for the openai policy, not {kind}")
    if kind == "transformers":
        from .transformers import TransformersPolicy

        return _build(TransformersPolicy, kind, model, **_rename(sampling, max_tokens="max_new_tokens"), **options)
    from .vllm import VLLMPolicy

    return _build(VLLMPolicy, kind, model, **_rename(sampling, max_tokens="max_new_tokens"), **options)


def _build(cls: type[Policy], kind: str, *args: Any, **kwargs: Any) -> Policy:
    """``cls(*args, **kwargs)``, refusing first a keyword the constructor does not take (a typo in
    ``--policy-config`` would otherwise be a bare TypeError)."""
    accepted = [name for name, p in inspect.signature(cls).parameters.items()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)][len(args):]
    for key in kwargs:
        if key not in accepted:
            raise ValueError(f"the {kind} policy has no setting {key!r}{did_you_mean(key, accepted)}; "
                             f"its settings: {', '.join(accepted)}")
    return cls(*args, **kwargs)


def _rename(options: dict[str, Any], **names: str) -> dict[str, Any]:
    return {names.get(k, k): v for k, v in options.items()}


_LAZY = {"OpenAIPolicy": "openai", "TransformersPolicy": "transformers", "VLLMPolicy": "vllm"}


def __getattr__(name: str) -> Any:
    """``from pyvision_agent.policies import OpenAIPolicy`` imports that policy's module only when asked."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["POLICY_KINDS", "ContextLengthError", "OpenAIPolicy", "Policy", "PolicyRequestError", "ScriptedPolicy",
           "TransformersPolicy", "VLLMPolicy", "make_policy"]
