"""The repository's promises to a new user: one version everywhere, README examples that run as written,
run outputs ignored by git, printable results."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

import pyvision_agent
import pyvision_env
from pyvision_agent.cli import main
from pyvision_env.sandbox import ExecutionResult

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_one_version_everywhere(capsys):
    pyproject = (ROOT / "pyproject.toml").read_text()
    project = pyproject.split("[project]\n", 1)[1].split("\n[", 1)[0]
    assert 'dynamic = ["version"]' in project and not re.search(r"^version =", project, re.MULTILINE)
    dynamic = pyproject.split("[tool.setuptools.dynamic]\n", 1)[1].split("\n[", 1)[0]
    assert re.match(r'version = \{ attr = "pyvision_env.__version__" \}', dynamic)
    assert pyvision_agent.__version__ == pyvision_env.__version__
    top = re.search(r"^## Changelog\n\n- (\d+\.\d+\.\d+)", README, re.MULTILINE).group(1)
    assert top == pyvision_env.__version__  # the changelog's newest entry is this version
    try:
        main(["--version"])
    except SystemExit as done:
        assert done.code == 0
    assert capsys.readouterr().out == f"pyvision {pyvision_env.__version__}\n"


def test_run_outputs_are_ignored_by_git(tmp_path):
    ignored = subprocess.run(["git", "check-ignore", "-q", "runs/qwen7b/trajectories.jsonl"], cwd=ROOT)
    assert ignored.returncode == 0, "runs/ (the README's --out) must be in .gitignore"


def _first_example() -> str:
    section = README.split("## Using the environments", 1)[1]
    return re.search(r"```python\n(.*?)```\n", section, re.DOTALL).group(1)


def test_the_readme_first_example_runs_and_prints_what_it_says():
    """Each expression line of the example with a literal in its comment must evaluate to that literal."""
    code = _first_example()
    lines = code.splitlines()
    namespace: dict = {}
    checked = 0
    for node in ast.parse(code).body:
        source = ast.get_source_segment(code, node)
        if isinstance(node, ast.Expr):
            value = eval(compile(ast.Expression(node.value), "README.md", "eval"), namespace)
            comment = lines[node.end_lineno - 1].split("#", 1)[1].strip() if "#" in lines[node.end_lineno - 1] else ""
            try:
                expected = ast.literal_eval(comment)
            except (ValueError, SyntaxError):
                continue
            assert value == expected, f"README says {source} gives {expected!r}; it gives {value!r}"
            checked += 1
        else:
            exec(compile(ast.Module([node], []), "README.md", "exec"), namespace)
    assert checked >= 2  # the reward components and the prediction with its reference


def test_execution_result_repr_shows_frame_shapes_not_pixels():
    frames = (np.zeros((1024, 768, 3), np.uint8), np.ones((4, 5, 3), np.uint8))
    result = ExecutionResult("hi\n", "", None, 0.25, frames, timed_out=True, notes=("2 frames",))
    text = repr(result)
    assert text == ("ExecutionResult(stdout='hi\\n', stderr='', error=None, exec_time_s=0.25, "
                    "frames=(1024x768x3 uint8, 4x5x3 uint8), timed_out=True, notes=('2 frames',))")
    assert len(text) < 200 and "array" not in text


def test_pyvision_version_from_a_fresh_process():
    done = subprocess.run([sys.executable, "-m", "pyvision_agent.cli", "--version"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"pyvision {pyvision_env.__version__}"
