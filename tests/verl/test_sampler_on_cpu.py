"""PyVisionGroupSampler against verl's real replay buffer, TransferQueue and Ray.

What cannot run here is generation (verl's rollout servers need a GPU), so ``ScriptedRollouts`` plays
the agent-loop workers: given the trainer's refill request it writes each prompt's status tag and one
record per trajectory into TransferQueue exactly as ``AgentLoopWorkerTQ`` does (real
``AgentLoopOutput.as_dict()`` records, verl's ``list_of_dict_to_tensordict``, the same keys and tags),
with rewards and agent-loop extra fields from a script. Everything downstream is verl's own code.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from types import SimpleNamespace

import pytest

ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")
from omegaconf import OmegaConf  # noqa: E402
from verl.experimental.agent_loop import AgentLoopOutput  # noqa: E402
from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics  # noqa: E402
from verl.trainer.ppo.v1.trainer_base import PPOTrainer  # noqa: E402
from verl.utils.tensordict_utils import list_of_dict_to_tensordict  # noqa: E402

from pyvision_agent.verl.sampler import PyVisionGroupSampler  # noqa: E402

P = "training/pyvision/"


@pytest.fixture(scope="module")
def store():
    """Ray with 8 logical CPUs (TransferQueue wants 3; this machine has 2 cores) and TransferQueue."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    tq.init()
    yield tq
    if started:
        tq.close()
        ray.shutdown()


@pytest.fixture
def train(store):
    """An empty ``train`` partition before and after each test."""
    def clear():
        for partition, items in (store.kv_list() or {}).items():
            if items:
                store.kv_clear(keys=list(items), partition_id=partition)
    clear()
    yield "train"
    clear()


def traj(reward: float, n_tool_calls: int = 1, *, broken: bool = False, end: str = "answered",
         turns: int = 2, malformed: bool = False, images: int = 1) -> dict:
    """One trajectory of the script: its reward and the agent loop's extra fields."""
    return {"reward": reward, "extra_fields": {"n_tool_calls": n_tool_calls, "num_turns": turns, "end_reason": end,
                                               "broken": broken, "broken_reason": "image mismatch" if broken else None,
                                               "malformed": malformed, "observation_images": images}}


class ScriptedRollouts:
    """The agent-loop workers' side of TransferQueue, with scripted outcomes (see the module docstring)."""

    def __init__(self, groups: list[list[dict]], *, delay_s: float = 0.0, partition: str = "train") -> None:
        self.script = deque(groups)
        self.delay_s = delay_s
        self.partition = partition
        self.requests: list[int] = []
        self.uids: list[str] = []
        self.threads: list[threading.Thread] = []

    def submit(self, num_prompts: int, global_steps: int = 1) -> int:
        """What the trainer's ``_add_prompts_to_generate`` triggers: ``num_prompts`` groups rolled out."""
        self.requests.append(num_prompts)
        for _ in range(num_prompts):
            uid = f"p{len(self.uids):03d}"
            self.uids.append(uid)
            tq.kv_put(key=uid, partition_id=self.partition, tag={"is_prompt": True, "status": "pending",
                                                                 "global_steps": global_steps})
            group = self.script.popleft()
            if self.delay_s:
                tq.kv_put(key=uid, partition_id=self.partition, tag={"status": "running"})
                thread = threading.Thread(target=self._finish, args=(uid, group, global_steps, self.delay_s))
                thread.start()
                self.threads.append(thread)
            else:
                self._finish(uid, group, global_steps)
        return num_prompts

    def _finish(self, uid: str, group: list[dict], global_steps: int, delay_s: float = 0.0) -> None:
        time.sleep(delay_s)
        keys, fields = [], []
        failed = any(t is None for t in group)  # None: that session raised
        for session, t in enumerate(group):
            if t is None:
                continue
            extra = {**t["extra_fields"], "reward_extra_info": {"score": t["reward"],
                                                                "broken": float(t["extra_fields"]["broken"])}}
            output = AgentLoopOutput(prompt_ids=[1, 2, 3], response_ids=[4, 5, 6], response_mask=[1, 1, 0],
                                     reward_score=t["reward"], num_turns=3, metrics=AgentLoopMetrics(),
                                     extra_fields=extra)
            field = output.as_dict()
            field.update({"uid": uid, "session_id": session, "global_steps": global_steps})
            keys.append(f"{uid}_{session}_0")
            fields.append(field)
        if keys:
            tq.kv_batch_put(keys=keys, partition_id=self.partition, fields=list_of_dict_to_tensordict(fields),
                            tags=[{"status": "success", "global_steps": global_steps}] * len(keys))
        tq.kv_put(key=uid, partition_id=self.partition, tag={"status": "failure" if failed else "finished"})


def make_sampler(rollouts: ScriptedRollouts, **kwargs) -> PyVisionGroupSampler:
    options = {"oversample_factor": 2.0, "poll_interval_s": 0.05, "gen_batch_size": 1, **kwargs}
    return PyVisionGroupSampler(trainer_mode="sync", trainer_config=OmegaConf.create({}), max_off_policy_threshold=8,
                                max_off_policy_strategy="drop", sampler_kwargs=OmegaConf.create(options),
                                refill_fn=rollouts.submit)


def sample(sampler: PyVisionGroupSampler, rollouts: ScriptedRollouts, batch_size: int):
    """One trainer step: prepare_step submits a batch, then the trainer asks the replay buffer for one."""
    rollouts.submit(batch_size)
    return sampler.sample(global_steps=1, partition_id="train", batch_size=batch_size)


def batch_uids(batch) -> list[str]:
    return sorted({key.split("_")[0] for key in batch.keys})


def test_oversamples_drops_flat_and_broken_groups_and_keeps_the_widest_whole_groups_on_cpu(train):
    groups = [
        [traj(0), traj(0), traj(0), traj(0)],                       # p000 zero variance
        [traj(0), traj(1.1), traj(0), traj(1.2)],                   # p001 std 0.58
        [traj(1.1), traj(1.1), traj(1.1), traj(1.1)],               # p002 zero variance
        [traj(0), traj(1.3, 3), traj(1.3, 3), traj(1.3, 3)],        # p003 std 0.56
        [traj(0), traj(1.4, 4, broken=True), traj(0), traj(1.0)],   # p004 broken
        [traj(0), traj(0), traj(0), traj(1.0, 0)],                  # p005 std 0.43
        [traj(1.0, 0), traj(1.0, 0), traj(0, 2), traj(0, 2)],       # p006 std 0.5
        [traj(0), traj(1.2), None, traj(0)],                        # p007 a session raised: failure
    ]
    rollouts = ScriptedRollouts(groups)
    batch, metrics = sample(make_sampler(rollouts, oversample_factor=2.5), rollouts, batch_size=3)

    assert rollouts.requests == [3, 5]  # the trainer's batch, then ceil((factor - 1) x 3) more
    assert batch_uids(batch) == ["p001", "p003", "p006"]
    assert sorted(batch.keys) == sorted(f"{uid}_{s}_0" for uid in ["p001", "p003", "p006"] for s in range(4))
    assert all(tag["status"] == "success" for tag in batch.tags)
    # everything not selected is gone from TransferQueue, and no prompt entry is left behind
    left = tq.kv_list("train").get("train", {})
    assert sorted(left) == sorted(batch.keys)
    # the batch's data is what the trainer will read next
    data = tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=["rm_scores"])
    assert sorted(round(float(s.sum()), 3) for s in data["rm_scores"]) == sorted(
        [0, 1.1, 0, 1.2, 0, 1.3, 1.3, 1.3, 1.0, 1.0, 0, 0])

    assert metrics[P + "groups/total"] == 8
    assert metrics[P + "groups/kept"] == 3
    assert metrics[P + "filtered/zero_variance/share"] == pytest.approx(2 / 8)
    assert metrics[P + "filtered/broken/share"] == pytest.approx(2 / 8)
    assert metrics[P + "filtered/over_budget/share"] == pytest.approx(1 / 8)
    assert metrics[P + "rounds"] == 1
    assert metrics[P + "padded_zero_variance"] == 0
    # collapse metrics over all 31 trajectories rolled out (the failed session left none)
    assert metrics[P + "answered_without_tools/share"] == pytest.approx(3 / 31)
    tool_calls = [1] * 4 + [1] * 4 + [1] * 4 + [1, 3, 3, 3] + [1, 4, 1, 1] + [1, 1, 1, 0] + [0, 0, 2, 2] + [1] * 3
    assert metrics[P + "tool_calls/mean"] == pytest.approx(sum(tool_calls) / 31)
    assert metrics[P + "broken/share"] == pytest.approx(1 / 31)


def test_rolls_out_more_when_too_few_groups_have_signal_on_cpu(train):
    flat = [traj(0), traj(0)]
    rollouts = ScriptedRollouts([flat, flat, [traj(0), traj(1)], flat, flat, [traj(1), traj(0.5)]])
    batch, metrics = sample(make_sampler(rollouts), rollouts, batch_size=2)

    # 2 + 2 oversampled; 1 usable, so ceil(shortfall 1 x factor 2) = 2 more, then 2 usable of 6
    assert rollouts.requests == [2, 2, 2]
    assert batch_uids(batch) == ["p002", "p005"]
    assert metrics[P + "rounds"] == 2
    assert metrics[P + "groups/total"] == 6
    assert metrics[P + "filtered/zero_variance/share"] == pytest.approx(4 / 6)


def test_pads_with_zero_variance_groups_after_max_rounds_on_cpu(train):
    flat = [traj(1.0), traj(1.0)]
    rollouts = ScriptedRollouts([[traj(0), traj(1)], flat, flat, flat])
    batch, metrics = sample(make_sampler(rollouts, max_rounds=1), rollouts, batch_size=2)

    assert rollouts.requests == [2, 2]
    assert batch_uids(batch) == ["p000", "p001"]  # the usable group, then the oldest flat one
    assert metrics[P + "padded_zero_variance"] == 1


def test_refuses_to_fill_a_batch_with_broken_groups_on_cpu(train):
    broken = [traj(0, broken=True), traj(1)]
    rollouts = ScriptedRollouts([broken] * 4)
    with pytest.raises(RuntimeError, match="cannot fill a batch of 2 groups: 4 of 4 were broken"):
        sample(make_sampler(rollouts, max_rounds=1), rollouts, batch_size=2)


def test_waits_for_groups_still_running_on_cpu(train):
    rollouts = ScriptedRollouts([[traj(0), traj(1)], [traj(0), traj(0.5)], [traj(0), traj(2)], [traj(0), traj(3)]],
                                delay_s=0.3)
    batch, metrics = sample(make_sampler(rollouts), rollouts, batch_size=2)
    for thread in rollouts.threads:
        thread.join()
    # the two widest groups came from the oversampled prompts, which finished last
    assert batch_uids(batch) == ["p002", "p003"]
    assert metrics[P + "groups/total"] == 4


def test_validation_batches_are_sampled_as_verl_does_without_filtering_on_cpu(train):
    flat = [traj(1.0), traj(1.0)]
    rollouts = ScriptedRollouts([flat, [traj(0, broken=True), traj(1)]], partition="val")
    sampler = make_sampler(rollouts)
    rollouts.submit(2)
    batch, metrics = sampler.sample(global_steps=1, partition_id="val", batch_size=2)
    assert rollouts.requests == [2]  # no oversampling
    assert batch_uids(batch) == ["p000", "p001"]  # nothing filtered: validation scores every task
    assert not any(key.startswith(P) for key in metrics)


def test_the_trainer_builds_it_from_the_config_on_cpu(train):
    """verl's own PPOTrainer._build_replay_buffer loads the class from trainer.v1.sampler.custom_sampler."""
    config = OmegaConf.create({"trainer": {"v1": {"sampler": {
        "max_off_policy_threshold": 8, "max_off_policy_strategy": "drop",
        "custom_sampler": {"path": "pkg://pyvision_agent.verl.sampler", "name": "PyVisionGroupSampler"},
        "sampler_kwargs": {"oversample_factor": 3.0, "min_std": 0.1, "gen_batch_size": 4}}, "sync": {}}}})
    trainer = SimpleNamespace(config=config, trainer_mode="sync", _add_prompts_to_generate=lambda n: n)
    sampler = PPOTrainer._build_replay_buffer(trainer)
    assert type(sampler).__name__ == "PyVisionGroupSampler"
    assert (sampler.oversample_factor, sampler.min_std, sampler.gen_batch_size) == (3.0, 0.1, 4)


def test_their_per_trajectory_filters_as_options_on_cpu(train):
    """require_image leaves out trajectories that never showed an image (the rest of the group trains);
    keep_malformed trains on malformed trajectories (reward 0 under the profile) instead of dropping the group."""
    groups = [
        [traj(0, images=0), traj(1.1), traj(0), traj(1.2, images=0)],     # p000: sessions 0 and 3 leave
        [traj(0, end="format_error", malformed=True), traj(1.1), traj(0), traj(1.1)],  # p001: malformed
        [traj(1.0, images=0), traj(0, images=0)],                         # p002: nothing left
        [traj(0), traj(0.5)],                                             # p003
    ]
    rollouts = ScriptedRollouts(groups)
    batch, metrics = sample(make_sampler(rollouts, oversample_factor=2.0, require_image=True, keep_malformed=True),
                            rollouts, batch_size=2)
    assert rollouts.requests == [2, 2]
    assert batch_uids(batch) == ["p000", "p001"]  # p000's survivors [1.1, 0] and p001: std 0.55 each; p003: 0.25
    assert sorted(batch.keys) == ["p000_1_0", "p000_2_0", *(f"p001_{s}_0" for s in range(4))]
    assert sorted(tq.kv_list("train").get("train", {})) == sorted(batch.keys)  # the left-out sessions are gone
    assert metrics[P + "filtered/no_image/share"] == pytest.approx(1 / 4)
    assert metrics[P + "filtered/no_image_trajectories"] == 4
    assert metrics[P + "malformed/share"] == pytest.approx(1 / 12)

    rollouts = ScriptedRollouts(groups)
    batch, metrics = sample(make_sampler(rollouts), rollouts, batch_size=2)  # the defaults: whole groups
    assert batch_uids(batch) == ["p000", "p002"] and metrics[P + "filtered/broken/share"] == pytest.approx(1 / 4)


@pytest.mark.parametrize(("options", "message"), [
    ({"oversample": 2}, r"unknown trainer.v1.sampler.sampler_kwargs \['oversample'\]"),
    ({"oversample_factor": 0.5}, "oversample_factor must be a number >= 1, got 0.5"),
    ({"max_rounds": 0}, "max_rounds must be an int >= 1, got 0"),
    ({"gen_batch_size": None}, "gen_batch_size must be an int >= 1"),
    ({"require_image": "yes"}, "require_image must be true or false, got 'yes'"),
])
def test_bad_sampler_kwargs_fail_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        make_sampler(ScriptedRollouts([]), **options)


def test_async_trainer_modes_are_refused():
    with pytest.raises(ValueError, match="needs trainer.v1.trainer_mode=sync .* got 'colocate_async'"):
        PyVisionGroupSampler("colocate_async", OmegaConf.create({}), 8, "drop", {}, refill_fn=lambda n: n)
