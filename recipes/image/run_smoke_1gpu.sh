#!/usr/bin/env bash
# A short run on one GPU (40 GB or more) to check the whole pipeline before a real one: Qwen2.5-VL-3B,
# synthetic tasks (written on the first run, offline), 4 trajectories per prompt, 3 turns, 5 steps.
#   bash recipes/image/run_smoke_1gpu.sh [hydra overrides...]
# Environment: MODEL (a hub id or a local path), DATA (where the synthetic set goes), PYTHON.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
MODEL=${MODEL:-Qwen/Qwen2.5-VL-3B-Instruct}
DATA=${DATA:-data/pyvision_image_smoke}

if [ ! -f "$DATA/train.parquet" ]; then
    "$PYTHON" "$ROOT/recipes/image/prepare_data.py" --synthetic 256 --val-size 16 --out "$DATA"
fi

"$PYTHON" -m verl.trainer.main_ppo \
    --config-path "$ROOT/recipes/image/config" --config-name pyvision_image \
    data.train_files="$DATA/train.parquet" \
    data.val_files="$DATA/val.parquet" \
    data.train_batch_size=8 \
    data.gen_batch_size=4 \
    data.max_response_length=8192 \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.actor.ppo_mini_batch_size=8 \
    actor_rollout_ref.actor.ppo_max_token_len_per_gpu=16384 \
    actor_rollout_ref.actor.fsdp_config.param_offload=true \
    actor_rollout_ref.actor.fsdp_config.optimizer_offload=true \
    actor_rollout_ref.rollout.n=4 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.4 \
    actor_rollout_ref.rollout.multi_turn.max_assistant_turns=3 \
    actor_rollout_ref.rollout.agent.agent_loop_config_path="$ROOT/pyvision_agent/verl/agent_loop.yaml" \
    trainer.n_gpus_per_node=1 \
    trainer.nnodes=1 \
    trainer.logger=[console] \
    trainer.experiment_name=pyvision_image_smoke \
    trainer.total_training_steps=5 \
    trainer.test_freq=5 \
    trainer.save_freq=-1 \
    "$@"
