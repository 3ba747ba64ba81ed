"""Policies: what turns a model (or a script) plays in the PyVision envs.

Model-backed policies import their heavy dependencies (openai, torch, vllm) lazily, so
``from pyvision_agent.policies import ScriptedPolicy`` stays light.
"""

from .base import Policy
from .scripted import ScriptedPolicy

__all__ = ["Policy", "ScriptedPolicy"]
