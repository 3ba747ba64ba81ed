"""select_groups and collapse_metrics: the framework-free oversample-filter-rank logic."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from pyvision_agent.group_selection import (
    DROP_REASONS,
    GroupStats,
    TrajectoryStats,
    collapse_metrics,
    select_groups,
)


def group(uid: str, rewards, broken=(), failed: bool = False, **fields) -> GroupStats:
    return GroupStats(uid, tuple(TrajectoryStats(reward=r, broken=i in broken, **fields)
                                 for i, r in enumerate(rewards)), failed=failed)


def uids(groups) -> list[str]:
    return [g.uid for g in groups]


def test_keeps_groups_with_spread_ranked_by_std_and_drops_the_rest_with_their_reason():
    groups = [
        group("flat0", [0, 0, 0, 0]),
        group("small", [0, 0, 0, 1]),        # std 0.433
        group("broken", [0, 1, 0, 1], broken={2}),
        group("flat1", [1.1, 1.1, 1.1, 1.1]),
        group("large", [0, 1, 0, 1]),        # std 0.5
        group("tool", [0, 1.2, 0, 1.1]),     # std 0.575: the tool reward widens the spread
        group("failed", [], failed=True),
    ]
    selection = select_groups(groups, batch_groups=2)

    assert uids(selection.kept) == ["tool", "large"]
    assert uids(selection.dropped["over_budget"]) == ["small"]
    assert uids(selection.dropped["broken"]) == ["broken", "failed"]
    assert uids(selection.dropped["zero_variance"]) == ["flat0", "flat1"]
    assert selection.counts == {"kept": 2, "broken": 2, "no_image": 0, "zero_variance": 2, "over_budget": 1}
    assert selection.n_groups == len(groups)
    assert selection.shortfall == 0


def test_whole_groups_are_kept_or_dropped_never_split():
    groups = [group(f"g{i}", [0, 1, i % 2, 0.5]) for i in range(7)]
    selection = select_groups(groups, batch_groups=3)
    for kept in selection.kept:
        assert kept in groups and len(kept.trajectories) == 4
    every = [*selection.kept, *itertools.chain.from_iterable(selection.dropped.values())]
    assert sorted(uids(every)) == sorted(uids(groups))


def test_a_broken_group_is_dropped_whatever_its_rewards():
    # even the group with the widest spread goes, and broken wins over zero variance
    selection = select_groups([group("wide", [0, 5], broken={0}), group("flat", [1, 1], broken={1}),
                               group("ok", [0, 1])], batch_groups=3)
    assert uids(selection.kept) == ["ok"]
    assert uids(selection.dropped["broken"]) == ["wide", "flat"]
    assert selection.dropped["zero_variance"] == ()


def test_equal_rewards_are_zero_variance_despite_float_noise():
    assert np.std([0.1] * 3) > 0  # the trap: numpy's std of equal floats is not exactly 0
    selection = select_groups([group("a", [0.1, 0.1, 0.1]), group("single", [1.0])], batch_groups=1)
    assert uids(selection.dropped["zero_variance"]) == ["a", "single"]
    assert selection.kept == ()


def test_min_std_drops_groups_with_too_little_spread():
    groups = [group("tiny", [1.0, 1.0, 1.0, 1.1]), group("big", [0, 1])]
    assert uids(select_groups(groups, 2).kept) == ["big", "tiny"]
    selection = select_groups(groups, 2, min_std=0.05)
    assert uids(selection.kept) == ["big"]
    assert uids(selection.dropped["zero_variance"]) == ["tiny"]
    assert selection.shortfall == 1


def test_ties_keep_input_order_so_the_selection_is_deterministic():
    groups = [group(f"g{i}", [0, 1]) for i in range(6)]
    assert uids(select_groups(groups, 4).kept) == ["g0", "g1", "g2", "g3"]
    reordered = groups[::-1]
    assert uids(select_groups(reordered, 4).kept) == ["g5", "g4", "g3", "g2"]
    assert uids(select_groups(reordered, 4).dropped["over_budget"]) == ["g1", "g0"]


def test_ranking_matches_a_brute_force_sort_on_random_groups():
    rng = random.Random(0)
    for _ in range(50):
        groups = [group(f"g{i}", [rng.choice([0.0, 1.0, 1.1, 1.2]) for _ in range(rng.randint(1, 8))],
                        broken={0} if rng.random() < 0.2 else ()) for i in range(rng.randint(1, 20))]
        batch = rng.randint(1, 10)
        selection = select_groups(groups, batch)
        valid = [g for g in groups if not g.broken and len(set(g.rewards)) > 1]
        expected = sorted(valid, key=lambda g: (-float(np.std(g.rewards)), groups.index(g)))
        assert uids(selection.kept) == uids(expected[:batch])
        assert uids(selection.dropped["over_budget"]) == uids(expected[batch:])
        assert selection.shortfall == max(0, batch - len(valid))
        assert all(a.reward_std >= b.reward_std for a, b in itertools.pairwise(selection.kept))


def test_shortfall_reports_what_is_missing():
    selection = select_groups([group("a", [0, 1]), group("b", [0, 0])], batch_groups=5)
    assert uids(selection.kept) == ["a"]
    assert selection.shortfall == 4
    assert selection.dropped["over_budget"] == ()


@pytest.mark.parametrize(("batch", "min_std", "message"), [
    (0, 0.0, "batch_groups must be a positive int, got 0"),
    (2.0, 0.0, "batch_groups must be a positive int, got 2.0"),
    (True, 0.0, "batch_groups must be a positive int, got True"),
    (2, -0.1, "min_std must be a finite number >= 0, got -0.1"),
    (2, float("nan"), "min_std must be a finite number >= 0, got nan"),
])
def test_bad_arguments_raise_naming_the_value(batch, min_std, message):
    with pytest.raises(ValueError, match=message):
        select_groups([group("a", [0, 1])], batch, min_std=min_std)


def test_repeated_uid_is_an_error():
    with pytest.raises(ValueError, match=r"repeated: \['a'\]"):
        select_groups([group("a", [0, 1]), group("a", [1, 0])], 2)


def test_a_group_without_trajectories_must_be_marked_failed():
    with pytest.raises(ValueError, match="group 'x' has no trajectories; pass failed=True"):
        GroupStats("x", ())
    assert GroupStats("x", (), failed=True).broken


def test_a_non_finite_reward_is_refused_at_the_record():
    with pytest.raises(ValueError, match="reward must be a finite number, got nan"):
        TrajectoryStats(reward=float("nan"))


def test_trajectory_stats_from_agent_loop_fields():
    stats = TrajectoryStats.from_fields(1.2, {"n_tool_calls": 2, "num_turns": 3, "end_reason": "answered",
                                              "broken": False, "prediction": "4"})
    assert stats == TrajectoryStats(reward=1.2, broken=False, n_tool_calls=2, num_turns=3, end_reason="answered")
    assert not stats.answered_without_tools
    assert TrajectoryStats.from_fields(1.0, {"end_reason": "answered"}).answered_without_tools
    # a float flag, as reward extra info carries it, still counts
    assert TrajectoryStats.from_fields(0.0, {"broken": 1.0}).broken
    assert TrajectoryStats.from_fields(0.0, {}) == TrajectoryStats(reward=0.0)
    flagged = TrajectoryStats.from_fields(0.0, {"malformed": True, "observation_images": 0}, key="u_0_0")
    assert (flagged.malformed, flagged.showed_image, flagged.key) == (True, False, "u_0_0")
    assert TrajectoryStats.from_fields(0.0, {"observation_images": 3}).showed_image is True


def test_collapse_metrics_over_trajectories():
    trajectories = [
        TrajectoryStats(1.2, n_tool_calls=2, num_turns=3, end_reason="answered"),
        TrajectoryStats(1.0, n_tool_calls=0, num_turns=1, end_reason="answered"),
        TrajectoryStats(0.0, n_tool_calls=4, num_turns=5, end_reason="max_turns"),
        TrajectoryStats(0.0, broken=True, n_tool_calls=1, num_turns=2, end_reason=None),
    ]
    metrics = collapse_metrics(trajectories)
    assert metrics == pytest.approx({
        "tool_calls/mean": 7 / 4, "tool_calls/max": 4.0, "turns/mean": 11 / 4,
        "answered_without_tools/share": 1 / 4, "broken/share": 1 / 4, "malformed/share": 0.0, "reward/mean": 2.2 / 4,
        "end_reason/answered/share": 2 / 4, "end_reason/max_turns/share": 1 / 4,
        "end_reason/unknown/share": 1 / 4,
    })


def test_collapse_metrics_with_a_selection_reports_every_filter_reason():
    groups = [group("a", [0, 1]), group("b", [1, 1]), group("c", [0, 1], broken={0}), group("d", [0, 0.5]),
              group("e", [0, 0])]
    selection = select_groups(groups, batch_groups=1)
    metrics = collapse_metrics([t for g in groups for t in g.trajectories], selection)
    assert metrics["groups/total"] == 5
    assert metrics["groups/kept"] == 1
    assert metrics["filtered/broken/share"] == pytest.approx(1 / 5)
    assert metrics["filtered/zero_variance/share"] == pytest.approx(2 / 5)
    assert metrics["filtered/over_budget/share"] == pytest.approx(1 / 5)
    assert {f"filtered/{r}/share" for r in DROP_REASONS} <= metrics.keys()


def test_collapse_metrics_of_nothing_is_empty_not_nan():
    assert collapse_metrics([]) == {}
    empty = select_groups([], 2)
    assert collapse_metrics([], empty) == {"groups/total": 0.0, "groups/kept": 0.0, "filtered/broken/share": 0.0,
                                           "filtered/no_image/share": 0.0, "filtered/zero_variance/share": 0.0,
                                           "filtered/over_budget/share": 0.0, "filtered/no_image_trajectories": 0.0}


def traj(reward: float, *, image: bool | None = True, malformed: bool = False, name: str = "") -> TrajectoryStats:
    return TrajectoryStats(reward=reward, showed_image=image, malformed=malformed, key=name or None)


def test_malformed_trajectories_drop_their_group_unless_kept():
    groups = [GroupStats("m", (traj(0.0, malformed=True), traj(1.0), traj(1.0))), GroupStats("ok", (traj(0), traj(1)))]
    default = select_groups(groups, 2)
    assert uids(default.kept) == ["ok"] and uids(default.dropped["broken"]) == ["m"]
    kept = select_groups(groups, 2, keep_malformed=True)
    assert uids(kept.kept) == ["ok", "m"]  # std 0.5 vs 0.47: the malformed sample counts with its reward 0
    assert kept.kept[1].trajectories == groups[0].trajectories


def test_require_image_drops_single_trajectories_and_ranks_the_rest():
    groups = [
        GroupStats("a", (traj(0, name="a0"), traj(1, image=False, name="a1"), traj(1, name="a2"))),
        GroupStats("b", (traj(1, image=False), traj(0, image=False))),   # nothing left
        GroupStats("c", (traj(0, image=False), traj(1), traj(1))),        # the survivors agree: no signal
        GroupStats("d", (traj(0), traj(0.5), traj(1))),
    ]
    selection = select_groups(groups, 3, require_image=True)
    assert uids(selection.kept) == ["a", "d"]  # a: [0, 1] std 0.5 beats d's 0.41
    assert [t.key for t in selection.kept[0].trajectories] == ["a0", "a2"]
    assert uids(selection.dropped["no_image"]) == ["b"] and uids(selection.dropped["zero_variance"]) == ["c"]
    assert selection.no_image_trajectories == 4
    metrics = collapse_metrics([t for g in groups for t in g.trajectories], selection)
    assert metrics["filtered/no_image/share"] == 0.25 and metrics["filtered/no_image_trajectories"] == 4.0
    # without the option nothing is taken out: b has spread and ranks first
    assert uids(select_groups(groups, 3).kept) == ["b", "a", "c"]


def test_require_image_needs_records_that_say_whether_an_image_was_shown():
    with pytest.raises(ValueError, match="group 'x' has a record without observation_images"):
        select_groups([GroupStats("x", (traj(0, image=None), traj(1)))], 1, require_image=True)
