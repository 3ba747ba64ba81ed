"""PyVision environments: agentic vision with Python code as the tool.

    import gymnasium as gym
    import pyvision_env  # registers PyVisionImage-v0 and PyVisionVideo-v0

    env = gym.make("PyVisionVideo-v0")
"""

from gymnasium.envs.registration import WrapperSpec, register

from . import errors
from .sandbox import ExecutionResult, IsolationReport, Sandbox, SandboxConfig, Session, get_sandbox

__version__ = "0.3.0"

# Entry points are strings: the envs (and their judges) load on first make(), not on this import,
# which the sandbox's zygote also does. Our own env checker replaces Gymnasium's, which breaks after a
# first reset that raises (see pyvision_env/envs/checker.py).
_CHECKER = WrapperSpec(name="EnvChecker", entry_point="pyvision_env.envs.checker:EnvChecker", kwargs={})
register(id="PyVisionImage-v0", entry_point="pyvision_env.envs.image:PyVisionImageEnv", disable_env_checker=True,
         additional_wrappers=(_CHECKER,))
register(id="PyVisionVideo-v0", entry_point="pyvision_env.envs.video:PyVisionVideoEnv", disable_env_checker=True,
         additional_wrappers=(_CHECKER,))

__all__ = [
    "ExecutionResult",
    "IsolationReport",
    "Sandbox",
    "SandboxConfig",
    "Session",
    "__version__",
    "errors",
    "get_sandbox",
]
