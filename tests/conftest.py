from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
from fake_openai import FakeOpenAIServer
from PIL import Image

from pyvision_env.sandbox import Sandbox, get_sandbox


@pytest.fixture(scope="session")
def sandbox() -> Sandbox:
    """The process-wide sandbox (one zygote for the whole test run, as in real use)."""
    return get_sandbox()


@pytest.fixture(scope="session")
def gradient() -> np.ndarray:
    """A 96x128 RGB image whose every pixel is distinct enough to check exact transport."""
    y, x = np.mgrid[0:96, 0:128]
    return np.stack([x * 2, y * 2, (x + y) % 256], axis=-1).astype(np.uint8)


@pytest.fixture()
def gradient_png(tmp_path, gradient) -> str:
    path = tmp_path / "gradient.png"
    Image.fromarray(gradient).save(path)
    return str(path)


@pytest.fixture
def fake_server() -> Iterator[FakeOpenAIServer]:
    pytest.importorskip("openai")
    server = FakeOpenAIServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


_OWN_VENV = {"verl", "vllm"}  # these suites run in .venv-verl / .venv-vllm (tests/run_all.sh)


def pytest_ignore_collect(collection_path, config):
    """Skip tests/verl and tests/vllm unless they are asked for by path: their packages pin other
    transformers versions, so they live in their own virtual environments."""
    from pathlib import Path

    if collection_path.parent != Path(__file__).parent or collection_path.name not in _OWN_VENV:
        return None
    asked = [Path(arg.split("::")[0]).resolve() for arg in config.args]
    return not any(a == collection_path or collection_path in a.parents for a in asked)
