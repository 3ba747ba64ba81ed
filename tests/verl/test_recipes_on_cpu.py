"""Every recipe config, as each run script launches it, composed by Hydra against verl's own config and
checked the way verl's trainer checks it (plus a strict key check verl lacks).

The run scripts are executed for real with ``PYTHON`` pointing at a recorder that writes down the
command line instead of starting training (which needs GPUs); the recorded ``--config-path``,
``--config-name`` and overrides are then composed exactly as ``verl.trainer.main_ppo`` would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import hydra
import pytest
import verl
from omegaconf import DictConfig, OmegaConf
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.trainer.ppo.v1.trainer_base import PPOTrainer
from verl.utils.config import omega_conf_to_dataclass, validate_config
from verl.utils.import_utils import resolve_config_path

from pyvision_agent.verl.data import AGENT_NAME

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(p.parent for p in (REPO / "recipes").glob("*/config"))
SCRIPTS = sorted((REPO / "recipes").glob("*/run_*.sh"))
VERL_CONFIG = Path(verl.__file__).parent / "trainer" / "config"

# sections verl leaves free-form: any key is allowed below them
FREE_FORM = ("trainer.v1.sampler.sampler_kwargs", "reward.custom_reward_function.reward_kwargs",
             "actor_rollout_ref.rollout.engine_kwargs", "actor_rollout_ref.model.override_config")


def launch(script: Path, tmp_path: Path, *args: str) -> list[str]:
    """Run ``script`` with a recorder as ``PYTHON``; return the trainer's command line (after ``python``)."""
    log = tmp_path / "calls.jsonl"
    recorder = tmp_path / "python"
    recorder.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c \'import json, sys; '
                        f'open(sys.argv[1], "a").write(json.dumps(sys.argv[2:]) + "\\n")\' "{log}" "$@"\n')
    recorder.chmod(0o755)
    env = {**os.environ, "PYTHON": str(recorder), "DATA": str(tmp_path / "data")}
    done = subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    (trainer,) = [c for c in calls if c[:2] == ["-m", "verl.trainer.main_ppo"]]
    return trainer[2:]


def parse(argv: list[str]) -> tuple[Path, str, list[str]]:
    """``--config-path P --config-name N overrides...`` as Hydra's command line reads it."""
    assert argv[0] == "--config-path" and argv[2] == "--config-name", argv
    return Path(argv[1]), argv[3], argv[4:]


def compose(config_dir: Path, name: str, overrides: list[str]) -> DictConfig:
    with hydra.initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return hydra.compose(config_name=name, overrides=overrides)


def leaves(node: DictConfig, prefix: str = "") -> Iterator[str]:
    for key in node.keys():
        path = f"{prefix}{key}"
        child = node._get_node(key)
        if isinstance(child, DictConfig) and len(child) and not path.startswith(FREE_FORM):
            yield from leaves(child, path + ".")
        else:
            yield path


def unknown_keys(config_dir: Path, name: str, overrides: list[str]) -> list[str]:
    """Keys the recipe YAML or the overrides set that verl's ``ppo_trainer`` does not have.

    Hydra merges a recipe YAML over verl's defaults without complaint and verl turns only some
    sections into dataclasses, so a misspelt ``trainer.critic_warmpu`` would otherwise pass silently.
    """
    base = compose(VERL_CONFIG, "ppo_trainer", [])
    recipe = OmegaConf.load(config_dir / f"{name}.yaml")
    keys = [k for k in leaves(recipe) if k.split(".")[0] not in ("hydra", "defaults")]
    # a ``+key=`` override adds a key on purpose (the CPU smoke run's additions); ``hydra.`` is Hydra's own
    keys += [o.split("=", 1)[0].lstrip("~") for o in overrides if not o.startswith(("+", "hydra."))]
    missing = []
    for key in keys:
        if key.startswith(FREE_FORM):
            continue
        node: object = base
        for part in key.split("."):
            if not isinstance(node, DictConfig) or part not in node.keys():
                missing.append(key)
                break
            node = node._get_node(part)
    return missing


def check_like_the_trainer(config: DictConfig, model_path: Path) -> object:
    """What verl does with a config before it trains; returns the sampler the trainer would build."""
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    OmegaConf.resolve(config)  # TaskRunnerV1.run resolves every interpolation
    sections = ["algorithm", "actor_rollout_ref.actor", "actor_rollout_ref.rollout"]
    sections += ["actor_rollout_ref.ref"] if need_reference_policy(config) else []
    sections += ["critic"] if need_critic(config) else []
    for section in sections:
        omega_conf_to_dataclass(OmegaConf.select(config, section))
    model = OmegaConf.merge(config.actor_rollout_ref.model, {"path": str(model_path)})
    omega_conf_to_dataclass(model)  # loads the tokenizer and the model config, as the workers do
    trainer = SimpleNamespace(config=config, trainer_mode=config.trainer.v1.trainer_mode,
                              _add_prompts_to_generate=lambda n: n)
    return PPOTrainer._build_replay_buffer(trainer)


def check_recipe(config_dir: Path, name: str, overrides: list[str], model_path: Path) -> tuple[DictConfig, object]:
    unknown = unknown_keys(config_dir, name, overrides)
    if unknown:
        raise KeyError(f"keys verl's ppo_trainer does not have: {unknown}")
    config = compose(config_dir, name, overrides)
    return config, check_like_the_trainer(config, model_path)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_run_script_composes_and_passes_verls_checks_on_cpu(script, tmp_path, tiny_vl_path):
    config_dir, name, overrides = parse(launch(script, tmp_path))
    assert config_dir == script.parent / "config"
    config, sampler = check_recipe(config_dir, name, overrides, tiny_vl_path)

    # the pieces fit together
    assert type(sampler).__name__ == "PyVisionGroupSampler"
    assert sampler.gen_batch_size == (config.data.gen_batch_size or config.data.train_batch_size)
    assert config.data.train_batch_size % sampler.gen_batch_size == 0
    loops = OmegaConf.load(resolve_config_path(config.actor_rollout_ref.rollout.agent.agent_loop_config_path))
    assert config.actor_rollout_ref.rollout.agent.default_agent_loop == AGENT_NAME
    assert AGENT_NAME in [entry.name for entry in loops]
    assert config.reward.reward_manager.name == "naive"  # the only manager that passes extra_fields on
    assert (config.reward.custom_reward_function.path, config.reward.custom_reward_function.name) == (
        "pkg://pyvision_agent.verl.reward", "compute_score")
    assert config.trainer.use_v1 and config.trainer.v1.trainer_mode == "sync"
    # GRPO as PyVision-RL runs it, in every setting
    assert config.algorithm.adv_estimator == "grpo"
    assert config.algorithm.norm_adv_by_std_in_grpo is False
    assert not config.actor_rollout_ref.actor.use_kl_loss and not config.algorithm.use_kl_in_reward
    assert not need_reference_policy(config)
    assert config.data.train_files == str(tmp_path / "data" / "train.parquet")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_the_8_gpu_script_is_the_papers_setting_on_cpu(recipe, tmp_path, tiny_vl_path):
    argv = launch(recipe / "run_qwen2_5_vl_7b_8gpu.sh", tmp_path)
    config_dir, name, overrides = parse(argv)
    assert "actor_rollout_ref.model.path=Qwen/Qwen2.5-VL-7B-Instruct" in overrides
    config = compose(config_dir, name, overrides)
    actor, rollout = config.actor_rollout_ref.actor, config.actor_rollout_ref.rollout
    assert (actor.optim.lr, rollout.n, config.data.train_batch_size, actor.ppo_mini_batch_size) == (1e-6, 8, 64, 16)
    assert (actor.clip_ratio, actor.loss_agg_mode, rollout.temperature) == (0.2, "token-mean", 1.0)
    assert actor.freeze_vision_tower is True
    assert rollout.multi_turn.max_assistant_turns == 5
    assert (config.trainer.n_gpus_per_node, config.trainer.nnodes) == (8, 1)
    assert config.data.max_prompt_length + config.data.max_response_length <= actor.ppo_max_token_len_per_gpu


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_the_smoke_script_fits_one_gpu_and_writes_its_data_on_cpu(recipe, tmp_path):
    argv = launch(recipe / "run_smoke_1gpu.sh", tmp_path)
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert [str(recipe / "prepare_data.py"), "--synthetic", "256", "--val-size", "16",
            "--out", str(tmp_path / "data")] in calls
    config = compose(*parse(argv))
    assert (config.trainer.n_gpus_per_node, config.trainer.total_training_steps) == (1, 5)
    assert config.data.max_prompt_length + config.data.max_response_length <= \
        config.actor_rollout_ref.actor.ppo_max_token_len_per_gpu


@pytest.mark.parametrize(("old", "new", "named"), [
    ("norm_adv_by_std_in_grpo: false", "norm_adv_by_std_grpo: false", "norm_adv_by_std_grpo"),
    ("ppo_mini_batch_size: 16", "ppo_mini_bach_size: 16", "ppo_mini_bach_size"),
    ("critic_warmup: 0", "critic_warmpu: 0", "critic_warmpu"),  # verl itself would ignore this one
    ("max_assistant_turns: 5", "max_assistent_turns: 5", "max_assistent_turns"),
    ("oversample_factor: 2.0", "oversample_factr: 2.0", "oversample_factr"),  # free-form: the sampler refuses it
    ("path: pkg://pyvision_agent.verl.sampler", "path: pkg://pyvision_agent.verl.samplers", "samplers"),
])
def test_a_wrong_key_in_a_recipe_config_fails_on_cpu(old, new, named, tmp_path, tiny_vl_path):
    source = REPO / "recipes" / "image" / "config" / "pyvision_image.yaml"
    text = source.read_text()
    assert text.count(old) == 1
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / source.name).write_text(text.replace(old, new))
    check_recipe(source.parent, "pyvision_image", [], tiny_vl_path)  # the original passes
    with pytest.raises(Exception, match=named):
        check_recipe(config_dir, "pyvision_image", [], tiny_vl_path)


def test_a_wrong_override_on_a_run_script_fails_on_cpu(tmp_path):
    config_dir, name, overrides = parse(launch(SCRIPTS[0], tmp_path, "trainer.critic_warmpu=0"))
    with pytest.raises(hydra.errors.ConfigCompositionException, match="critic_warmpu"):
        compose(config_dir, name, overrides)


def test_the_recipes_differ_only_where_the_modality_does():
    """The video config is the image one with its own data and names (so a fix lands in both)."""
    image, video = ((REPO / "recipes" / m / "config" / f"pyvision_{m}.yaml").read_text() for m in ("image", "video"))
    for old, new in [("image recipe: GRPO on PyVisionImage-v0", "video recipe: GRPO on PyVisionVideo-v0"),
                     ("data/pyvision_image/", "data/pyvision_video/"), ("pyvision_image_qwen", "pyvision_video_qwen"),
                     ("(5 turns, frames included)", "(5 turns, sampled frames included)")]:
        image = image.replace(old, new)
    assert video == image


def test_the_recipe_reward_function_loads_on_cpu(tmp_path, tiny_vl_path):
    pytest.importorskip("pyvision_agent.verl.reward")
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = compose(*parse(launch(SCRIPTS[0], tmp_path)))
    assert callable(get_custom_reward_fn(config))


def test_each_recipe_has_the_verl_recipe_layout():
    assert [p.name for p in RECIPES] == ["image", "video"]
    for recipe in RECIPES:
        assert {p.name for p in recipe.iterdir() if p.is_file()} >= {
            "README.md", "prepare_data.py", "run_qwen2_5_vl_7b_8gpu.sh", "run_smoke_1gpu.sh"}
        assert list(OmegaConf.load(recipe / "config" / f"pyvision_{recipe.name}.yaml").defaults) == [
            "ppo_trainer", "_self_"]
