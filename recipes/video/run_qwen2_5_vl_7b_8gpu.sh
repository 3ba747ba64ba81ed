#!/usr/bin/env bash
# PyVision-RL's video setting: Qwen2.5-VL-7B-Instruct, GRPO on one node of 8 GPUs (80 GB each).
# The hyperparameters live in config/pyvision_video.yaml; extra Hydra overrides may follow:
#   bash recipes/video/run_qwen2_5_vl_7b_8gpu.sh trainer.logger=[console]
# Environment: MODEL (a hub id or a local path), DATA (the directory prepare_data.py wrote), PYTHON.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
MODEL=${MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}
DATA=${DATA:-data/pyvision_video}

"$PYTHON" -m verl.trainer.main_ppo \
    --config-path "$ROOT/recipes/video/config" --config-name pyvision_video \
    data.train_files="$DATA/train.parquet" \
    data.val_files="$DATA/val.parquet" \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.rollout.agent.agent_loop_config_path="$ROOT/pyvision_agent/verl/agent_loop.yaml" \
    trainer.n_gpus_per_node=8 \
    trainer.nnodes=1 \
    "$@"
