"""Oversample-filter-rank for GRPO groups, and the metrics that show tool use collapsing.

GRPO learns only from groups whose rewards differ: with ``norm_adv_by_std_in_grpo=False`` a group with
equal rewards gets zero advantage everywhere, and a group holding a broken trajectory (the sandbox
crashed, the token bookkeeping went wrong) teaches the model noise. PyVision-RL therefore rolls out more
prompts than a batch needs, drops those groups and keeps the ones whose rewards spread the most. Unlike
PyVision-RL, which filters after computing advantages and cuts groups at the batch boundary, this module
decides per *whole group* and before any advantage exists.

PyVision-RL also filters single trajectories; two of its filters are options here: ``require_image`` drops
the trajectories that never showed an image observation (their ``hasimage``), and ``keep_malformed``
keeps trajectories with a malformed turn (their ``ERROR_IN_ACTION``) as samples instead of dropping the
group. Under ``profile="pyvision_rl"`` a malformed turn ends the episode without an answer, so such a
trajectory carries reward 0, as theirs do.

Plain Python and numpy, no trainer import: verl's replay-buffer sampler
(:mod:`pyvision_agent.verl.sampler`) is a thin adapter around :func:`select_groups`, and any other
trainer can call it the same way. :func:`collapse_metrics` computes the per-step numbers that warn
about *interaction collapse* (the policy stops calling tools) from the same records, so a rollout
summary and the training logs report the same quantities.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

DropReason = Literal["broken", "no_image", "zero_variance", "over_budget"]
DROP_REASONS: tuple[DropReason, ...] = ("broken", "no_image", "zero_variance", "over_budget")
"""Why a group was not kept, in the order the checks run: a broken group is never trained on, whatever
its rewards; with ``require_image`` a group none of whose trajectories showed an image has nothing left;
a group without reward spread carries no signal; ``over_budget`` groups were valid but ranked below the
ones that filled the batch."""


@dataclass(frozen=True)
class TrajectoryStats:
    """What the selection and the metrics need to know about one finished trajectory."""

    reward: float
    """The scalar reward GRPO uses (accuracy plus tool reward, as the reward function returned it)."""
    broken: bool = False
    """The trajectory must not be trained on (sandbox failure, image/token mismatch, ...)."""
    n_tool_calls: int = 0
    """Executed code blocks, failed ones included."""
    num_turns: int = 0
    """Model turns in the episode."""
    end_reason: str | None = None
    """Why the episode ended (``answered``, ``max_turns``, ``error``, ...); None if unknown."""
    malformed: bool = False
    """A turn held neither code nor an answer (PyVision-RL's ``ERROR_IN_ACTION``)."""
    showed_image: bool | None = None
    """Whether an interpreter observation showed at least one image; None when the record does not say."""
    key: str | None = None
    """The caller's name for the trajectory (verl's trajectory key), carried through the selection."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.reward):
            raise ValueError(f"a trajectory reward must be a finite number, got {self.reward!r}; check the reward "
                             f"function")

    @property
    def answered_without_tools(self) -> bool:
        """The model answered without running any code: the first sign of interaction collapse."""
        return self.end_reason == "answered" and self.n_tool_calls == 0

    @classmethod
    def from_fields(cls, reward: float, fields: Mapping[str, Any], key: str | None = None) -> TrajectoryStats:
        """Build from a record's fields: the agent loop's ``extra_fields``, a reward function's extra info
        or a rollout record (``broken``, ``malformed``, ``n_tool_calls``, ``num_turns``, ``end_reason``,
        ``observation_images``; missing ones default to "not broken, well formed, no tools, no turns,
        unknown end, unknown images")."""
        end_reason, images = fields.get("end_reason"), fields.get("observation_images")
        return cls(reward=float(reward), broken=bool(fields.get("broken") or False),
                   n_tool_calls=int(fields.get("n_tool_calls") or 0), num_turns=int(fields.get("num_turns") or 0),
                   end_reason=None if end_reason is None else str(end_reason),
                   malformed=bool(fields.get("malformed") or False),
                   showed_image=None if images is None else int(images) > 0, key=key)


@dataclass(frozen=True)
class GroupStats:
    """The trajectories rolled out for one prompt (one GRPO group)."""

    uid: str
    """Identifies the prompt (verl's ``uid``); unique within one selection."""
    trajectories: tuple[TrajectoryStats, ...]
    """The group's finished trajectories."""
    failed: bool = False
    """The rollout itself raised for some trajectory, so the group is incomplete (verl's ``failure``)."""

    def __post_init__(self) -> None:
        if not self.trajectories and not self.failed:
            raise ValueError(f"group {self.uid!r} has no trajectories; pass failed=True for a group whose rollout "
                             f"failed")
        object.__setattr__(self, "trajectories", tuple(self.trajectories))

    @property
    def rewards(self) -> np.ndarray:
        return np.array([t.reward for t in self.trajectories], dtype=np.float64)

    @property
    def reward_std(self) -> float:
        """Population standard deviation of the rewards (0.0 for fewer than two trajectories)."""
        rewards = self.rewards
        return float(rewards.std()) if rewards.size > 1 else 0.0

    @property
    def broken(self) -> bool:
        return self.failed or any(t.broken for t in self.trajectories)


@dataclass(frozen=True)
class Selection:
    """The result of :func:`select_groups`."""

    kept: tuple[GroupStats, ...]
    """Groups to train on, best first (highest reward std; ties keep their input order)."""
    dropped: Mapping[DropReason, tuple[GroupStats, ...]]
    """Groups left out, per reason (every reason present): ``broken`` and ``zero_variance`` in input
    order, ``over_budget`` in rank order."""
    batch_groups: int
    """How many groups were asked for."""
    no_image_trajectories: int = 0
    """Trajectories ``require_image`` took out of groups that were not broken (the groups hold the rest)."""
    counts: Mapping[str, int] = field(init=False)
    """Number of groups per outcome: ``kept`` and each drop reason."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", {"kept": len(self.kept),
                                            **{reason: len(self.dropped[reason]) for reason in DROP_REASONS}})

    @property
    def n_groups(self) -> int:
        """Every group considered."""
        return sum(self.counts.values())

    @property
    def shortfall(self) -> int:
        """Groups missing to fill the batch: roll out more prompts, or accept a smaller batch."""
        return self.batch_groups - len(self.kept)


def select_groups(groups: Sequence[GroupStats], batch_groups: int, *, min_std: float = 0.0,
                  require_image: bool = False, keep_malformed: bool = False) -> Selection:
    """Filter and rank GRPO groups, keeping whole groups to fill a batch of ``batch_groups``.

    A group is dropped as ``broken`` if any trajectory is broken or its rollout failed, or (unless
    ``keep_malformed``) holds a malformed trajectory. With ``require_image`` the trajectories that never
    showed an image leave their group (the group goes on with the rest, ``no_image`` when none is left).
    A group is then dropped as ``zero_variance`` if its rewards are all equal or their std is at most
    ``min_std``. The rest are ranked by reward std, highest first; ties keep the order of ``groups``
    (pass them oldest first, for instance), so the result is deterministic. The first ``batch_groups``
    are kept, the others are ``over_budget``. Fewer than ``batch_groups`` may survive: see
    :attr:`Selection.shortfall`. Groups in the result hold the trajectories that passed.

    Raises ValueError for a non-positive batch size, a negative or non-finite ``min_std``, a uid that
    appears twice, or ``require_image`` over a trajectory that does not say whether it showed an image.
    """
    if isinstance(batch_groups, bool) or not isinstance(batch_groups, int) or batch_groups < 1:
        raise ValueError(f"batch_groups must be a positive int, got {batch_groups!r}")
    if not isinstance(min_std, (int, float)) or not math.isfinite(min_std) or min_std < 0:
        raise ValueError(f"min_std must be a finite number >= 0, got {min_std!r}")
    duplicates = [uid for uid, n in Counter(g.uid for g in groups).items() if n > 1]
    if duplicates:
        raise ValueError(f"each group needs its own uid; repeated: {sorted(duplicates)[:5]}")

    broken, no_image, flat, ranked = [], [], [], []
    no_image_trajectories = 0
    for group in groups:
        if group.broken or (not keep_malformed and any(t.malformed for t in group.trajectories)):
            broken.append(group)
            continue
        if require_image:
            if any(t.showed_image is None for t in group.trajectories):
                raise ValueError(f"require_image needs to know whether each trajectory showed an image; group "
                                 f"{group.uid!r} has a record without observation_images")
            shown = tuple(t for t in group.trajectories if t.showed_image)
            no_image_trajectories += len(group.trajectories) - len(shown)
            if not shown:
                no_image.append(group)
                continue
            group = replace(group, trajectories=shown)
        rewards = group.rewards
        # the exact comparison avoids float noise: np.std([0.1] * 3) is 1.4e-17, not 0
        if rewards.max() == rewards.min() or group.reward_std <= min_std:
            flat.append(group)
        else:
            ranked.append(group)
    ranked.sort(key=lambda g: -g.reward_std)  # stable: ties keep input order
    return Selection(kept=tuple(ranked[:batch_groups]),
                     dropped={"broken": tuple(broken), "no_image": tuple(no_image), "zero_variance": tuple(flat),
                              "over_budget": tuple(ranked[batch_groups:])},
                     batch_groups=batch_groups, no_image_trajectories=no_image_trajectories)


def collapse_metrics(trajectories: Iterable[TrajectoryStats], selection: Selection | None = None) -> dict[str, float]:
    """Per-step numbers to watch for interaction collapse, flat ``name -> float``.

    Over every trajectory rolled out (the policy's behaviour, before any filtering):
    ``tool_calls/mean``, ``tool_calls/max``, ``turns/mean``, ``answered_without_tools/share``,
    ``broken/share``, ``malformed/share``, ``reward/mean`` and ``end_reason/<reason>/share`` per end
    reason seen (``unknown`` for None). With a ``selection``: ``groups/total``, ``groups/kept``,
    ``filtered/<reason>/share`` for every drop reason (the share of all groups considered) and
    ``filtered/no_image_trajectories`` (a count). A falling tool-call mean with a rising share answered
    without tools is the collapse the PyVision-RL paper warns about.
    """
    trajectories = list(trajectories)
    metrics: dict[str, float] = {}
    if trajectories:
        tool_calls = np.array([t.n_tool_calls for t in trajectories], dtype=np.float64)
        metrics.update({
            "tool_calls/mean": float(tool_calls.mean()),
            "tool_calls/max": float(tool_calls.max()),
            "turns/mean": float(np.mean([t.num_turns for t in trajectories])),
            "answered_without_tools/share": float(np.mean([t.answered_without_tools for t in trajectories])),
            "broken/share": float(np.mean([t.broken for t in trajectories])),
            "malformed/share": float(np.mean([t.malformed for t in trajectories])),
            "reward/mean": float(np.mean([t.reward for t in trajectories])),
        })
        ends = Counter(t.end_reason or "unknown" for t in trajectories)
        metrics.update({f"end_reason/{reason}/share": n / len(trajectories) for reason, n in sorted(ends.items())})
    if selection is not None:
        total = selection.n_groups
        metrics["groups/total"] = float(total)
        metrics["groups/kept"] = float(selection.counts["kept"])
        for reason in DROP_REASONS:
            metrics[f"filtered/{reason}/share"] = selection.counts[reason] / total if total else 0.0
        metrics["filtered/no_image_trajectories"] = float(selection.no_image_trajectories)
    return metrics


__all__ = ["DROP_REASONS", "DropReason", "GroupStats", "Selection", "TrajectoryStats", "collapse_metrics",
           "select_groups"]
