#!/usr/bin/env bash
# Two GRPO steps of this recipe on a CPU, through verl's own trainer (verl.trainer.main_ppo) and this
# recipe's config: a tiny Qwen2.5-VL built from a config (no download), synthetic tasks, PyVision's agent
# loop, reward and sampler, FSDP2 over gloo, and a transformers rollout server (rollout transformers_cpu).
# A few minutes on 2 cores; it proves the pieces fit, not that the policy learns (see README.md).
#   bash recipes/image/run_smoke_cpu.sh [hydra overrides...]
# Environment: MODEL (a Qwen2.5-VL directory; default: the tiny model, built on the first run), DATA, OUT
# (metrics, rollout dumps, served requests), PYTHON.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
OUT=${OUT:-outputs/pyvision_image_smoke_cpu}
MODEL=${MODEL:-$OUT/tiny-qwen2.5-vl}
DATA=${DATA:-data/pyvision_image_smoke_cpu}
mkdir -p "$OUT"

if [ ! -f "$MODEL/config.json" ]; then
    PYTHONPATH="$ROOT/tests:${PYTHONPATH:-}" "$PYTHON" "$ROOT/tests/verl/smoke_model.py" "$MODEL"
fi
if [ ! -f "$DATA/train.parquet" ]; then
    # counting tasks only: their answers (1-3 shapes) are what the tiny model guesses, so groups have reward spread
    "$PYTHON" "$ROOT/recipes/image/prepare_data.py" --synthetic 32 --synthetic-kind count_shapes --val-size 4 \
        --out "$DATA"
fi

# verl has no CPU platform, FSDP engine registration or VL rollout for the CPU: pyvision_agent.verl.cpu adds
# them through verl's external-module hook, and joins the training worker to its gloo process group.
export VERL_USE_EXTERNAL_MODULES=pyvision_agent.verl.cpu VERL_PLATFORM=cpu
export VERL_FILE_LOGGER_PATH="$OUT/metrics.jsonl"
rm -rf "$OUT/metrics.jsonl" "$OUT/served.jsonl" "$OUT/rollouts" "$OUT/groups"

"$PYTHON" -m verl.trainer.main_ppo \
    --config-path "$ROOT/recipes/image/config" --config-name pyvision_image \
    data.train_files="$DATA/train.parquet" \
    data.val_files="$DATA/val.parquet" \
    data.train_batch_size=2 \
    data.gen_batch_size=1 \
    data.max_prompt_length=2048 \
    data.max_response_length=1536 \
    data.dataloader_num_workers=0 \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.model.use_remove_padding=false \
    actor_rollout_ref.model.enable_gradient_checkpointing=false \
    +actor_rollout_ref.model.override_config.attn_implementation=sdpa \
    actor_rollout_ref.actor.strategy=fsdp2 \
    actor_rollout_ref.actor.use_torch_compile=false \
    actor_rollout_ref.actor.optim.lr=1e-4 \
    actor_rollout_ref.actor.optim.weight_decay=0 \
    +actor_rollout_ref.actor.fsdp_config.mixed_precision="{param_dtype: fp32, reduce_dtype: fp32, buffer_dtype: fp32}" \
    actor_rollout_ref.actor.ppo_mini_batch_size=2 \
    actor_rollout_ref.actor.ppo_max_token_len_per_gpu=8192 \
    actor_rollout_ref.rollout.name=transformers_cpu \
    actor_rollout_ref.rollout.n=4 \
    actor_rollout_ref.rollout.multi_turn.max_assistant_turns=3 \
    actor_rollout_ref.rollout.agent.num_workers=1 \
    actor_rollout_ref.rollout.agent.agent_loop_config_path="$ROOT/pyvision_agent/verl/agent_loop.yaml" \
    +actor_rollout_ref.rollout.engine_kwargs.transformers_cpu.log_path="$OUT/served.jsonl" \
    reward.num_workers=1 \
    transfer_queue.backend.SimpleStorage.num_data_storage_units=1 \
    trainer.device=cpu \
    trainer.n_gpus_per_node=1 \
    trainer.nnodes=1 \
    trainer.logger=[console,file] \
    trainer.experiment_name=pyvision_image_smoke_cpu \
    trainer.total_training_steps=2 \
    trainer.val_before_train=false \
    trainer.test_freq=-1 \
    trainer.save_freq=-1 \
    trainer.resume_mode=disable \
    trainer.default_local_dir="$OUT/checkpoints" \
    trainer.rollout_data_dir="$OUT/rollouts" \
    hydra.run.dir="$OUT/hydra" \
    +trainer.v1.sampler.sampler_kwargs.dump_dir="$OUT/groups" \
    ray_kwargs.ray_init.num_cpus=32 \
    +ray_kwargs.ray_init.num_gpus=1 \
    +ray_kwargs.ray_init.runtime_env.worker_process_setup_hook=pyvision_agent.verl.cpu.join_process_group \
    "$@"
