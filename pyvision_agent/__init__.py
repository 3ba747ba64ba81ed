"""PyVision agents: policies, rollouts, evaluation and training recipes around the PyVision envs."""

from pyvision_env import __version__

__all__ = ["__version__"]
