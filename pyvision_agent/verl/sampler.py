"""Oversample-filter-rank as a custom sampler of verl's V1 trainer (a replay-buffer subclass).

verl's sync trainer submits ``train_batch_size`` prompts per step, then asks the replay buffer for a
batch of as many finished groups. This sampler asks for ``oversample_factor - 1`` times more prompts
first, waits until every group has finished (rewards are computed as trajectories finish, so they are
in TransferQueue by then), runs :func:`pyvision_agent.group_selection.select_groups` on them and hands
the trainer the best whole groups. Filtering happens *before* advantages, so a dropped group never
shifts another's baseline. When too few groups survive it rolls out more (up to ``max_rounds``); if
the batch still cannot be filled it pads with zero-variance groups (zero advantage, so no gradient,
under GRPO without std normalisation) and reports how many; it raises only when even those run out.

Configure it with::

    trainer.v1.sampler.custom_sampler.path=pkg://pyvision_agent.verl.sampler
    trainer.v1.sampler.custom_sampler.name=PyVisionGroupSampler
    trainer.v1.sampler.sampler_kwargs={oversample_factor: 2.0, min_std: 0.0, max_rounds: 3, gen_batch_size: 1}

PyVision-RL's per-trajectory filters are ``require_image: true`` (trajectories that never showed an
image observation are left out of the batch; their group trains on the rest) and ``keep_malformed:
true`` (trajectories with a malformed turn are trained on; by default their group is dropped).

``gen_batch_size`` must equal the trainer's dataloader fetch size (``data.gen_batch_size``, or
``data.train_batch_size`` when that is null): verl can only submit whole fetches. Every step logs
:func:`pyvision_agent.group_selection.collapse_metrics` under ``training/pyvision/``. With ``dump_dir``
set, every trajectory the step rolled out, dropped ones included, is written to
``<dump_dir>/step_<n>.jsonl`` with its group's fate (``kept`` or the drop reason), reward, the agent
loop's extra fields and its token ids and response mask: for debugging runs (it is large).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import transfer_queue as tq
from omegaconf import DictConfig, OmegaConf
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
from verl.utils.skip import SkipManager

from ..group_selection import GroupStats, Selection, TrajectoryStats, collapse_metrics, select_groups

logger = logging.getLogger(__name__)

METRICS_PREFIX = "training/pyvision/"
DEFAULTS: dict[str, Any] = {"oversample_factor": 2.0, "min_std": 0.0, "max_rounds": 3, "gen_batch_size": 1,
                            "poll_interval_s": 2.0, "require_image": False, "keep_malformed": False,
                            "dump_dir": None}


def _options(sampler_kwargs: Mapping[str, Any] | DictConfig | None) -> dict[str, Any]:
    """``sampler_kwargs`` merged over :data:`DEFAULTS`, checked (a wrong key or value fails at trainer start)."""
    given = OmegaConf.to_container(sampler_kwargs, resolve=True) if isinstance(sampler_kwargs, DictConfig) \
        else dict(sampler_kwargs or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown trainer.v1.sampler.sampler_kwargs {unknown} for PyVisionGroupSampler; "
                         f"known: {sorted(DEFAULTS)}")
    options = {**DEFAULTS, **given}
    factor, rounds, fetch = options["oversample_factor"], options["max_rounds"], options["gen_batch_size"]
    if not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor < 1:
        raise ValueError(f"sampler_kwargs.oversample_factor must be a number >= 1, got {factor!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"sampler_kwargs.max_rounds must be an int >= 1, got {rounds!r}")
    if isinstance(fetch, bool) or not isinstance(fetch, int) or fetch < 1:
        raise ValueError(f"sampler_kwargs.gen_batch_size must be an int >= 1 (set it to data.gen_batch_size, or "
                         f"data.train_batch_size when that is null), got {fetch!r}")
    if not isinstance(options["poll_interval_s"], (int, float)) or options["poll_interval_s"] <= 0:
        raise ValueError(f"sampler_kwargs.poll_interval_s must be > 0, got {options['poll_interval_s']!r}")
    for flag in ("require_image", "keep_malformed"):
        if not isinstance(options[flag], bool):
            raise ValueError(f"sampler_kwargs.{flag} must be true or false, got {options[flag]!r}")
    if options["dump_dir"] is not None and not isinstance(options["dump_dir"], str):
        raise ValueError(f"sampler_kwargs.dump_dir must be a directory path or null, got {options['dump_dir']!r}")
    return options


class PyVisionGroupSampler(ReplayBuffer):
    """verl's sync replay buffer with oversample-filter-rank instead of first-come groups.

    Validation batches (partition ``val``) are sampled exactly as verl does.
    """

    def __init__(self, trainer_mode: str, trainer_config: DictConfig, max_off_policy_threshold: int | None,
                 max_off_policy_strategy: str, sampler_kwargs: DictConfig | Mapping[str, Any] | None,
                 refill_fn=None, **kwargs: Any) -> None:
        if trainer_mode != "sync":
            raise ValueError(f"PyVisionGroupSampler needs trainer.v1.trainer_mode=sync (it waits for every oversampled "
                             f"group before choosing), got {trainer_mode!r}")
        if refill_fn is None:
            raise ValueError("PyVisionGroupSampler needs the trainer's refill_fn to submit the extra prompts")
        options = _options(sampler_kwargs)
        super().__init__(trainer_mode, trainer_config, max_off_policy_threshold, max_off_policy_strategy,
                         sampler_kwargs, poll_interval=float(options["poll_interval_s"]), refill_fn=refill_fn,
                         gen_batch_size=options["gen_batch_size"])
        self.oversample_factor = float(options["oversample_factor"])
        self.min_std = float(options["min_std"])
        self.max_rounds = options["max_rounds"]
        self.filters = {"require_image": options["require_image"], "keep_malformed": options["keep_malformed"]}
        self.dump_dir: str | None = options["dump_dir"]
        self._stats: dict[str, GroupStats] = {}  # finished groups never change: read each once

    def _request(self, num_prompts: float) -> int:
        """Submit at least ``num_prompts`` more prompts, rounded up to whole dataloader fetches."""
        count = math.ceil(num_prompts / self.gen_batch_size) * self.gen_batch_size if num_prompts > 0 else 0
        if count:
            self.refill_fn(count)
        return count

    def _group_stats(self, partition_id: str, uids: set[str]) -> list[GroupStats]:
        """Stats of the terminal groups ``uids``, read from TransferQueue once per group."""
        new = uids - self._stats.keys()
        by_uid: dict[str, dict[str, str]] = {uid: {} for uid in new}  # uid -> session -> latest key
        for key in self.partitions[partition_id]:
            uid, session, index = _split_key(key)
            if uid in by_uid:
                previous = by_uid[uid].get(session)
                if previous is None or index > _split_key(previous)[2]:
                    by_uid[uid][session] = key
        keys = [key for sessions in by_uid.values() for key in sessions.values()]
        records: dict[str, TrajectoryStats] = {}
        if keys:
            data = tq.kv_batch_get(keys=keys, partition_id=partition_id, select_fields=["rm_scores", "extra_fields"])
            for key, scores, extra in zip(keys, data["rm_scores"], data["extra_fields"], strict=True):
                extra = getattr(extra, "data", extra)
                fields = {**extra.get("reward_extra_info", {}), **extra}
                records[key] = TrajectoryStats.from_fields(float(scores.sum().item()), fields, key=key)
        for uid, sessions in by_uid.items():
            # a group that finished without a single trajectory (an agent loop returned nothing) is as unusable
            # as one whose rollout raised
            self._stats[uid] = GroupStats(uid, tuple(records[sessions[s]] for s in sorted(sessions, key=int)),
                                          failed=uid in self.failure_keys[partition_id] or not sessions)
        steps = self.prompt_global_steps[partition_id]
        return [self._stats[uid] for uid in sorted(uids, key=lambda u: (steps.get(u, 0), u))]  # oldest first

    @SkipManager.annotate_tq(role="rollout_tq", phase="sample")
    def sample(self, global_steps: int, partition_id: str, batch_size: int) -> tuple[KVBatchMeta, dict]:
        """Oversample, wait for every group, filter and rank, return ``batch_size`` whole groups."""
        if partition_id == "val":
            return super().sample(global_steps, partition_id, batch_size)
        # the trainer has already submitted batch_size prompts for this step
        self._request((self.oversample_factor - 1) * batch_size)
        rounds, last_debug = 1, 0.0
        while True:
            self._sync_metadata_from_transfer_queue()
            if self.pending_keys[partition_id] or self.running_keys[partition_id]:
                last_debug = self._wait_for_next_poll(partition_id, last_debug)
                continue
            terminal = self.finished_keys[partition_id] | self.failure_keys[partition_id]
            groups = self._group_stats(partition_id, terminal)
            selection = select_groups(groups, batch_size, min_std=self.min_std, **self.filters)
            if selection.shortfall and rounds < self.max_rounds:
                rounds += 1
                self._request(selection.shortfall * self.oversample_factor)
                continue
            break
        kept = self._fill(selection, batch_size)
        if self.dump_dir:
            self._dump(global_steps, partition_id, selection, kept)
        self._clear_groups(partition_id, terminal - {g.uid for g in kept})
        self._clear_trajectories(partition_id, kept)
        snapshot = dict(self.partitions[partition_id])
        self._stats.clear()
        metrics = collapse_metrics([t for g in groups for t in g.trajectories], selection)
        metrics.update({"rounds": float(rounds), "padded_zero_variance": float(len(kept) - len(selection.kept))})
        return self._materialize_batch(partition_id, [g.uid for g in kept], snapshot), \
            {METRICS_PREFIX + name: value for name, value in metrics.items()}

    def _clear_trajectories(self, partition_id: str, kept: list[GroupStats]) -> None:
        """Remove the sessions the selection took out of kept groups (``require_image``) from TransferQueue."""
        kept_sessions = {_split_key(t.key)[:2] for g in kept for t in g.trajectories}
        uids = {g.uid for g in kept}
        dropped = [key for key in self.partitions[partition_id]
                   if _split_key(key)[0] in uids and _split_key(key)[:2] not in kept_sessions]
        if dropped:
            tq.kv_clear(partition_id=partition_id, keys=dropped)
            for key in dropped:
                del self.partitions[partition_id][key]

    def _fill(self, selection: Selection, batch_size: int) -> list[GroupStats]:
        """The kept groups, padded with zero-variance ones when the rollouts ran out of signal."""
        kept = list(selection.kept)
        if selection.shortfall:
            padding = selection.dropped["zero_variance"][:selection.shortfall]
            logger.warning("only %d of %d groups had reward spread after %d rounds; padding with %d zero-variance "
                           "groups (no gradient)", len(kept), batch_size, self.max_rounds, len(padding))
            kept.extend(padding)
        if len(kept) < batch_size:
            raise RuntimeError(
                f"cannot fill a batch of {batch_size} groups: {selection.counts['broken']} of "
                f"{selection.n_groups} were broken and only {len(kept)} usable after {self.max_rounds} rounds; "
                f"look at the broken_reason of the agent loop, or raise sampler_kwargs.max_rounds / oversample_factor")
        return kept

    def _dump(self, global_steps: int, partition_id: str, selection: Selection, kept: list[GroupStats]) -> None:
        """Write every trajectory of the step's groups to ``<dump_dir>/step_<global_steps>.jsonl``."""
        fate = {g.uid: reason for reason, groups in selection.dropped.items() for g in groups}
        fate |= {g.uid: "kept" for g in kept}  # zero-variance groups padding the batch are kept too
        keys = sorted(key for key in self.partitions[partition_id] if _split_key(key)[0] in fate)
        if not keys:
            return
        fields = ["prompts", "responses", "response_mask", "rm_scores", "extra_fields", "reward_model"]
        data = tq.kv_batch_get(keys=keys, partition_id=partition_id, select_fields=fields)
        os.makedirs(self.dump_dir, exist_ok=True)
        with open(os.path.join(self.dump_dir, f"step_{global_steps}.jsonl"), "w", encoding="utf-8") as out:
            for i, key in enumerate(keys):
                uid, session, _ = _split_key(key)
                extra = dict(getattr(data["extra_fields"][i], "data", data["extra_fields"][i]))
                reward_model = getattr(data["reward_model"][i], "data", data["reward_model"][i])
                record = {"step": global_steps, "key": key, "uid": uid, "session": int(session), "group": fate[uid],
                          "reward": float(data["rm_scores"][i].sum().item()),
                          "ground_truth": reward_model.get("ground_truth"), "extra_fields": extra,
                          "prompt_ids": data["prompts"][i].tolist(), "response_ids": data["responses"][i].tolist(),
                          "response_mask": data["response_mask"][i].tolist()}
                out.write(json.dumps(record, default=_plain_json) + "\n")


def _split_key(key: str) -> tuple[str, str, int]:
    """(uid, session, index) of one of verl's trajectory keys, ``{uid}_{session}_{index}`` (the uid is the
    trainer's uuid4: no underscores, which verl's own replay buffer relies on too)."""
    uid, session, index = key.rsplit("_", 2)
    return uid, session, int(index)


def _plain_json(value: Any) -> Any:
    """JSON for what the records hold besides plain types (numpy values, tensors)."""
    return value.tolist() if hasattr(value, "tolist") else str(value)
