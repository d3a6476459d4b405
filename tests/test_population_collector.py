"""PopulationCollector: [N, T] batches, per-policy episode statistics, errors."""
from __future__ import annotations

import math

import pytest
import torch
from tensordict.nn import TensorDictModule
from torch.distributions import Normal
from torchrl.envs import TransformedEnv

from torchrl_sapg import PolicyIdTransform, PopulationCollector, make_actor_critic, make_env, prepare_population_env


def _actor(obs_dim: int, act_dim: int, num_policies: int, seed: int = 0):
    torch.manual_seed(seed)
    ac = make_actor_critic(
        obs_dim, act_dim, num_policies=num_policies, latent_dim=4 if num_policies > 1 else 0, hidden_sizes=(16,)
    )
    return ac.actor


def _collector(env_name: str, num_envs: int, num_policies: int, horizon: int, seed: int = 0, **env_kwargs):
    env = make_env(env_name, num_envs, seed=seed, **env_kwargs)
    actor = _actor(env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1], num_policies, seed)
    return PopulationCollector(env, actor, num_policies=num_policies, frames_per_batch=num_envs * horizon)


class HandEpisodeStats:
    """Per-policy episode statistics computed with plain Python loops over collected batches.

    Two independent sources: the running sums of ``("next", "reward")`` and of steps since the
    last ``done`` (the env's raw signals), and the values of ``("next", "episode_reward")`` /
    ``("next", "step_count")`` / ``("next", "success")`` read at each ``done``. Episodes that
    straddle batches are carried over, since the collector keeps the env running.
    """

    def __init__(self, num_envs: int, num_policies: int, extra_keys=()):
        self.n, self.m = num_envs, num_policies
        self.block = num_envs // num_policies
        self.extra_keys = list(extra_keys)
        self.running_return = [0.0] * num_envs
        self.running_length = [0] * num_envs
        self.reset()

    def reset(self):
        self.ended = {p: [] for p in range(self.m)}  # list of dicts per finished episode

    def add(self, batch):
        reward = batch["next", "reward"].squeeze(-1).double().tolist()
        done = batch["next", "done"].squeeze(-1).tolist()
        ep_reward = batch["next", "episode_reward"].squeeze(-1).double().tolist()
        step_count = batch["next", "step_count"].squeeze(-1).tolist()
        extras = {k: batch["next", k].squeeze(-1).double().tolist() for k in self.extra_keys}
        for env in range(self.n):
            for t in range(len(reward[env])):
                self.running_return[env] += reward[env][t]
                self.running_length[env] += 1
                if done[env][t]:
                    rec = {
                        "hand_return": self.running_return[env],
                        "hand_length": self.running_length[env],
                        "return": ep_reward[env][t],
                        "length": step_count[env][t],
                    }
                    rec.update({k: extras[k][env][t] for k in self.extra_keys})
                    self.ended[env // self.block].append(rec)
                    self.running_return[env] = 0.0
                    self.running_length[env] = 0

    def expected(self, field):
        out = []
        for p in range(self.m):
            vals = [e[field] for e in self.ended[p]]
            out.append(sum(vals) / len(vals) if vals else math.nan)
        return out

    def counts(self):
        return [float(len(self.ended[p])) for p in range(self.m)]


def _assert_stats_match(stats, hand: HandEpisodeStats, extra_keys=()):
    assert stats.shape == torch.Size([hand.m])
    assert stats["count"].tolist() == hand.counts()
    for got_key, fields in (("return", ("return", "hand_return")), ("length", ("length", "hand_length"))):
        got = stats[got_key].tolist()
        for field in fields:
            exp = hand.expected(field)
            for g, e in zip(got, exp):
                if math.isnan(e):
                    assert math.isnan(g)
                else:
                    assert g == pytest.approx(e, rel=1e-5, abs=1e-4), (got_key, field, got, exp)
    for k in extra_keys:
        exp = hand.expected(k)
        for g, e in zip(stats[k].tolist(), exp):
            assert (math.isnan(g) and math.isnan(e)) or g == pytest.approx(e, abs=1e-6)


# ----------------------------------------------------------------------------- batch layout
def test_batch_layout_keys_and_behaviour_log_prob():
    n, m, horizon = 8, 4, 12
    collector = _collector("pendulum", n, m, horizon, max_episode_steps=5)
    batch = next(iter(collector))
    assert batch.shape == torch.Size([n, horizon])
    for key in ("policy_id", "action", "action_log_prob", "observation", ("next", "observation"),
                ("next", "reward"), ("next", "done"), ("next", "terminated"), ("next", "truncated"),
                ("next", "policy_id"), ("next", "episode_reward"), ("next", "step_count")):
        assert key in batch.keys(True, True), key
    ids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert batch["policy_id"].dtype == torch.int64
    assert torch.equal(batch["policy_id"], ids[:, None].expand(n, horizon))
    assert torch.equal(batch["next", "policy_id"], batch["policy_id"])
    # the behaviour log-prob is the sampled action's Gaussian log-density (summed over action dims)
    expected = Normal(batch["loc"], batch["scale"]).log_prob(batch["action"]).sum(-1)
    assert torch.allclose(batch["action_log_prob"], expected, atol=1e-5)
    assert not torch.allclose(batch["action"], batch["loc"])  # actions were sampled, not the mean
    # the scale of each row is its own policy's log-std row
    log_std = collector.policy.log_std.detach()
    assert torch.allclose(batch["scale"], log_std[batch["policy_id"]].exp())
    # time runs along dim 1: next obs at t is the obs at t+1 unless the episode ended at t
    done = batch["next", "done"].squeeze(-1)
    assert done.any() and not done.all()
    cont = ~done[:, :-1]
    assert torch.equal(batch["next", "observation"][:, :-1][cont], batch["observation"][:, 1:][cont])
    # ... and after a done the next row starts a fresh episode
    assert (batch["step_count"][:, 1:].squeeze(-1)[done[:, :-1]] == 0).all()
    assert (batch["next", "step_count"].squeeze(-1)[done] == 5).all()


def test_trajectory_ids_only_on_request_and_the_batch_is_otherwise_the_same():
    """Off by default: TorchRL's traj-id tracking syncs with the host; turning it on adds only that entry."""
    batches = {}
    for track in (False, True):
        env = make_env("cartpole", 6, seed=0)
        actor = _actor(env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1], 3)
        collector = PopulationCollector(env, actor, num_policies=3, frames_per_batch=6 * 40,
                                        **({"track_traj_ids": True} if track else {}))
        it = iter(collector)
        batches[track] = torch.cat([next(it), next(it)], dim=1)
        collector.shutdown()
    plain, tracked = batches[False], batches[True]
    assert ("collector", "traj_ids") not in plain.keys(True, True)
    traj_ids = tracked["collector", "traj_ids"]
    done = tracked["next", "done"].squeeze(-1)
    assert done[:, :-1].any()  # cartpole episodes end within 80 steps: ids change after each end
    assert torch.equal(traj_ids[:, 1:] != traj_ids[:, :-1], done[:, :-1])
    assert set(plain.keys(True, True)) == set(tracked.exclude("collector").keys(True, True))
    for key in plain.keys(True, True):
        assert torch.equal(plain[key], tracked[key]), key


# ----------------------------------------------------------------------------- episode statistics
@pytest.mark.parametrize(
    "env_name, env_kwargs, horizon",
    [
        ("cartpole", {}, 48),  # episodes of varied length ending in termination
        ("pendulum", {"max_episode_steps": 7}, 16),  # truncations that straddle batch boundaries
    ],
)
def test_episode_stats_match_hand_computation(env_name, env_kwargs, horizon):
    n, m = 8, 2
    collector = _collector(env_name, n, m, horizon, **env_kwargs)
    hand = HandEpisodeStats(n, m)
    it = iter(collector)
    batch = next(it)
    hand.add(batch)
    assert sum(hand.counts()) > 0
    _assert_stats_match(collector.episode_stats(), hand)

    # read-and-reset: an immediate second read sees no episodes
    empty = collector.episode_stats()
    assert empty["count"].tolist() == [0.0, 0.0]
    assert all(math.isnan(v) for v in empty["return"].tolist() + empty["length"].tolist())

    # several batches accumulate until the next read
    hand.reset()
    for _ in range(3):
        hand.add(next(it))
    peek = collector.episode_stats(reset=False)
    _assert_stats_match(peek, hand)
    _assert_stats_match(collector.episode_stats(), hand)  # peeking did not clear
    assert collector.episode_stats()["count"].tolist() == [0.0, 0.0]
    collector.shutdown()


def test_cartpole_lengths_vary_so_the_mean_is_not_trivial():
    collector = _collector("cartpole", 8, 2, 48)
    batch = next(iter(collector))
    done = batch["next", "done"].squeeze(-1)
    lengths = batch["next", "step_count"].squeeze(-1)[done]
    assert lengths.unique().numel() > 2


def test_success_reported_per_policy_on_mountain_car():
    """Policy 0 pumps energy (push along the velocity) and always reaches the flag; policy 1
    pushes nothing and always times out: success is 1 for policy 0 and 0 for policy 1."""

    def act(observation, policy_id):
        push = torch.where(observation[..., 1:2] >= 0, 1.0, -1.0)
        return torch.where(policy_id[:, None] == 0, push, torch.zeros_like(push))

    policy = TensorDictModule(act, in_keys=["observation", "policy_id"], out_keys=["action"])
    n, m = 4, 2
    env = make_env("mountain_car", n, seed=0, max_episode_steps=200)
    collector = PopulationCollector(env, policy, num_policies=m, frames_per_batch=n * 250)
    batch = next(iter(collector))
    hand = HandEpisodeStats(n, m, extra_keys=["success"])
    hand.add(batch)
    stats = collector.episode_stats()
    assert "success" in stats.keys()
    _assert_stats_match(stats, hand, extra_keys=["success"])
    assert stats["success"].tolist() == [1.0, 0.0]
    assert stats["length"][1] == 200.0
    assert stats["length"][0] < 200.0
    # the flag's +100 bonus shows up in policy 0's return only
    assert stats["return"][0] > 50.0 and stats["return"][1] == 0.0


def test_success_reported_on_acrobot():
    n, m = 4, 2
    collector = _collector("acrobot", n, m, 12, max_episode_steps=5)
    hand = HandEpisodeStats(n, m, extra_keys=["success"])
    it = iter(collector)
    for _ in range(2):
        hand.add(next(it))
    stats = collector.episode_stats()
    assert "success" in stats.keys()
    _assert_stats_match(stats, hand, extra_keys=["success"])


def test_no_success_key_on_tasks_without_one():
    collector = _collector("pendulum", 4, 2, 8, max_episode_steps=4)
    next(iter(collector))
    stats = collector.episode_stats()
    assert set(stats.keys()) == {"return", "length", "count"}


def test_single_policy_works_unchanged():
    n = 4
    collector = _collector("pendulum", n, 1, 10, max_episode_steps=6)
    batch = next(iter(collector))
    assert batch.shape == torch.Size([n, 10])
    assert torch.equal(batch["policy_id"], torch.zeros(n, 10, dtype=torch.int64))
    hand = HandEpisodeStats(n, 1)
    hand.add(batch)
    stats = collector.episode_stats()
    assert stats.shape == torch.Size([1])
    _assert_stats_match(stats, hand)
    assert stats["count"].tolist() == [4.0]


def test_episode_sums_travel_with_state_dict():
    collector = _collector("pendulum", 4, 2, 8, max_episode_steps=3)
    next(iter(collector))
    state = collector.state_dict()
    expected = collector.episode_stats(reset=False)
    other = _collector("pendulum", 4, 2, 8, max_episode_steps=3, seed=1)
    other.load_state_dict(state)
    got = other.episode_stats()
    assert torch.allclose(got["return"], expected["return"])
    assert torch.equal(got["count"], expected["count"])


# ----------------------------------------------------------------------------- errors
def test_frames_per_batch_not_a_multiple_of_num_envs():
    env = make_env("pendulum", 4, seed=0)
    with pytest.raises(ValueError) as err:
        PopulationCollector(env, _actor(3, 1, 2), num_policies=2, frames_per_batch=41)
    assert "frames_per_batch=41" in str(err.value) and "num_envs=4" in str(err.value)


def test_num_envs_not_divisible_by_num_policies():
    env = make_env("pendulum", 6, seed=0)
    with pytest.raises(ValueError) as err:
        PopulationCollector(env, _actor(3, 1, 4), num_policies=4, frames_per_batch=60)
    assert "num_envs=6" in str(err.value) and "num_policies=4" in str(err.value)


def test_env_already_tagged_for_another_number_of_policies():
    env = TransformedEnv(make_env("pendulum", 8, seed=0), PolicyIdTransform(2))
    with pytest.raises(ValueError) as err:
        PopulationCollector(env, _actor(3, 1, 4), num_policies=4, frames_per_batch=80)
    msg = str(err.value)
    assert "2 policies" in msg and "num_policies=4" in msg


def test_env_already_tagged_for_the_same_number_is_not_tagged_twice():
    env = TransformedEnv(make_env("pendulum", 8, seed=0), PolicyIdTransform(2))
    prepared = prepare_population_env(env, 2)
    kinds = [type(t).__name__ for t in prepared.transform]
    assert kinds.count("PolicyIdTransform") == 1
    assert {"RewardSum", "StepCounter"} <= set(kinds)
    collector = PopulationCollector(env, _actor(3, 1, 2), num_policies=2, frames_per_batch=16)
    batch = next(iter(collector))
    assert torch.equal(batch["policy_id"][:, 0], torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))


def test_collector_rejects_non_env():
    with pytest.raises(TypeError, match="EnvBase"):
        PopulationCollector(lambda: None, _actor(3, 1, 1), num_policies=1, frames_per_batch=4)
