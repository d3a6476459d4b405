"""Population rules pinned by number: the cases the other tests left free (found by mutation testing).

Each test compares the library with a direct hand computation on a small seeded input: EPO's tie order
and logged elite statistics, DexPBT's per-key perturbation range, integer casts, group sizes, the
reference gap rule's boundaries, the linear-schedule learning rate PBT writes, and the collector's
per-policy means of single episodes and of every present episode key.
"""
from __future__ import annotations

import math
import random

import pytest
import torch
from tensordict import TensorDict
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from torchrl_sapg import OnPolicyTrainer, PolicyLatents, PopulationCollector, make_actor_critic, make_env
from torchrl_sapg.population import GeneticLatentScheduler
from torchrl_sapg.population.pbt import (
    HyperparameterSpec,
    get_hyperparameter,
    get_hyperparameters,
    mutate_hyperparameters,
    pbt_decision,
    set_hyperparameter,
    set_hyperparameters,
)
from torchrl_sapg.trainers import LearningRateSchedule


def _latents(M, D=3, seed=0):
    return PolicyLatents(M, D, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- EPO
def test_tied_followers_rank_by_lower_id_beyond_sixteen():
    """Ties keep the lower id first (stable sort) with more than 16 followers, where an unstable sort reorders."""
    M, E = 21, 5
    sched = GeneticLatentScheduler(latents=_latents(M), num_elites=E, mutation_std=0.0, seed=0)
    g = torch.Generator().manual_seed(1)
    fitness = torch.randint(0, 3, (M,), generator=g).double()  # 20 followers, three values: many ties
    report = sched.evolve(fitness)
    order = sorted(range(1, M), key=lambda i: (-float(fitness[i]), i))  # by hand: best first, lower id first
    assert report.elites == order[:E]
    assert report.replaced == order[E:]


def test_child_fitness_counts_episodes_with_step_count_at_most_s_plus_t_plus_one():
    """After a replacement, a child's episode ending at batch step t counts iff step_count <= s + t + 1 (s: its age)."""
    M, T = 4, 4
    sched = GeneticLatentScheduler(latents=_latents(M), mutation_std=0.0, seed=0)
    assert sched.step(0, torch.tensor([0.0, 3.0, 2.0, 1.0])).replaced == [3]
    g = torch.Generator().manual_seed(0)
    pid = torch.arange(M).unsqueeze(-1).expand(M, T).clone()  # env i runs policy i
    sums, counts = [0.0] * M, [0] * M
    for b in range(3):  # s = 0, 4, 8 env steps since the child's birth
        value = torch.randn(M, T, generator=g)
        length = torch.randint(1, 60, (M, T), generator=g)
        for k in range(T):  # the child's lengths straddle the boundary s + k + 1 (below, at, above)
            length[3, k] = 4 * b + k + 1 + (k % 3) - 1
        batch = TensorDict({"policy_id": pid, "next": {
            "done": torch.ones(M, T, 1, dtype=torch.bool), "episode_reward": value.unsqueeze(-1),
            "step_count": length.unsqueeze(-1)}}, [M, T])
        sched.observe(batch)
        for i in range(M):
            for k in range(T):
                if i != 3 or int(length[i, k]) <= 4 * b + k + 1:  # by hand: only the child is filtered
                    sums[i] += float(value[i, k])
                    counts[i] += 1
        assert counts[3] < T * (b + 1)  # the rule did drop some of the child's episodes
        expected = torch.tensor([s / c for s, c in zip(sums, counts)], dtype=torch.float64)
        torch.testing.assert_close(sched.fitness(), expected, rtol=1e-6, atol=1e-6)


def test_metrics_report_the_elites_fitness_and_the_replacement_total():
    """epo/elite_fitness_min, epo/elite_fitness_mean (of the last step's elites) and epo/num_replaced_total."""
    sched = GeneticLatentScheduler(latents=_latents(7), num_elites=3, mutation_std=0.1, seed=0)
    first = torch.tensor([0.0, 5.0, 1.0, 9.0, 3.0, 7.0, 2.0])
    second = torch.tensor([0.0, 2.0, 8.0, 4.0, 6.0, 1.0, 3.0])
    sched.step(0, first)
    report = sched.step(1, second)
    assert report.triggered and report.elites == [2, 4, 3]  # by hand: fitness 8, 6, 4
    m = sched.metrics()
    assert m["epo/num_elites"] == 3.0
    assert m["epo/elite_fitness_min"] == 4.0
    assert m["epo/elite_fitness_mean"] == pytest.approx((8.0 + 6.0 + 4.0) / 3)
    assert m["epo/num_replaced"] == 3.0 and m["epo/num_replaced_total"] == 6.0  # 3 replaced at each of 2 steps


# ----------------------------------------------------------------------------- DexPBT: mutation and specs
def test_per_key_mu_range_replaces_the_global_one():
    """A spec's (mu_min, mu_max) replaces the global range: mu = U(spec.mu_min, spec.mu_max)."""
    specs = [HyperparameterSpec("lr", mu_min=1.3, mu_max=1.4)]
    for seed in range(20):
        got = mutate_hyperparameters({"lr": 2.0}, specs, prob=1.0, generator=random.Random(seed),
                                     mu_min=1.1, mu_max=1.5)["lr"]
        g = random.Random(seed)
        assert g.random() < 1.0
        mu = g.uniform(1.3, 1.4)
        want = 2.0 * mu if g.random() < 0.5 else 2.0 / mu
        assert got == pytest.approx(want, rel=1e-12)


def test_integer_hyperparameters_are_rounded_not_truncated():
    """An integer spec casts by rounding (2.7 -> 3) when read from an init value and when set through a setter."""
    spec = HyperparameterSpec("n", "integer")
    assert (spec.cast(2.7), spec.cast(2.4), spec.cast(-1.6)) == (3, 2, -2)
    seen = []
    specs = [HyperparameterSpec("n", "integer", setter=lambda trainer, value: seen.append(value), init=2.7)]
    values = get_hyperparameters(object(), specs)
    assert values == {"n": 3} and isinstance(values["n"], int)
    set_hyperparameters(object(), {"n": 4.6}, specs)
    assert seen == [5] and isinstance(seen[0], int)


def test_a_spec_with_min_equal_to_max_pins_the_value():
    """min == max is a valid clamp (only min > max is refused): every mutation lands on that value."""
    spec = HyperparameterSpec("clip_epsilon", min=0.2, max=0.2)
    assert spec.clamp(0.1) == 0.2 and spec.clamp(0.3) == 0.2
    out = mutate_hyperparameters({"clip_epsilon": 0.2}, [spec], prob=1.0, generator=random.Random(0))
    assert out == {"clip_epsilon": 0.2}


# ----------------------------------------------------------------------------- DexPBT: selection
def test_group_sizes_are_ceil_of_the_fraction_without_float_round_up():
    """num_top = ceil(f * P) of the exact product: 0.28 * 25 gives 7, not ceil(7.000000000000001) = 8."""
    objs = {m: float(100 - m) for m in range(25)}
    d = pbt_decision(0, objs, top_fraction=0.28, generator=0)
    assert d.num_top == 7 == math.ceil(28 * 25 / 100)
    assert pbt_decision(6, objs, top_fraction=0.28, generator=0).group == "top"
    assert pbt_decision(7, objs, top_fraction=0.28, generator=0).group == "middle"


def test_bottom_group_is_at_most_the_members_outside_the_top():
    """num_bottom = min(ceil(bottom_fraction * P), P - num_top) when the two fractions overlap."""
    objs = {m: float(10 - m) for m in range(10)}
    d = pbt_decision(9, objs, top_fraction=0.7, bottom_fraction=0.5, generator=0)
    assert (d.num_top, d.num_bottom) == (7, 3)
    assert [pbt_decision(m, objs, top_fraction=0.7, bottom_fraction=0.5, generator=0).group
            for m in range(10)] == ["top"] * 7 + ["bottom"] * 3


def test_reference_mode_needs_more_than_half_the_objectives():
    """Reference selection: no decision while at most max(2, P // 2) objectives are known; one more and it acts."""
    P = 8
    objs = {m: None for m in range(P)}
    for m, v in zip(range(4), (4.0, 3.0, 2.0, 1.0)):
        objs[m] = v
    d = pbt_decision(7, objs, selection="reference", generator=0)  # 4 known == max(2, 8 // 2)
    assert (d.num_known, d.action, d.reason) == (4, "continue", "not_enough_members")
    objs[4] = 0.5
    d = pbt_decision(7, objs, selection="reference", generator=0)  # 5 known > 4
    assert d.num_known == 5 and d.reason != "not_enough_members" and d.group == "bottom"


def test_gap_rule_is_strict_and_reports_its_threshold():
    """Replace only if gap > gap_sigma*sigma AND gap > gap_abs*|cand| (strict); threshold = max of the two."""
    objs = {0: 2.0, 1: 0.0}  # P = 2: member 0 top, member 1 bottom; sigma = pop. std(0, 2) = 1, gap = 2
    kw = dict(gap_rule=True, sigma_drop_worst=0.0, generator=0)
    d = pbt_decision(1, objs, gap_sigma=2.0, gap_abs=0.05, **kw)  # gap == 2 * sigma: not past it
    assert (d.sigma, d.gap, d.threshold) == (1.0, 2.0, 2.0) and (d.action, d.reason) == ("mutate", "small_gap")
    d = pbt_decision(1, objs, gap_sigma=0.0, gap_abs=1.0, **kw)  # gap == 1.0 * |2|: not past it
    assert d.threshold == 2.0 and (d.action, d.reason) == ("mutate", "small_gap")
    d = pbt_decision(1, objs, gap_sigma=1.5, gap_abs=0.25, **kw)  # thresholds 1.5 and 0.5: max 1.5 < 2
    assert d.threshold == 1.5 and (d.action, d.reason, d.source) == ("replace", "gap", 0)
    d = pbt_decision(1, objs, gap_sigma=0.1, gap_abs=0.9, **kw)  # thresholds 0.1 and 1.8: max 1.8 < 2
    assert d.threshold == pytest.approx(1.8) and d.action == "replace"


def test_gap_rule_replaces_a_member_without_objective():
    """A bottom member with no objective has an infinite gap: the reference rule replaces it."""
    objs = {0: 3.0, 1: 2.0, 2: 1.0, 3: None}  # 3 known > max(2, 4 // 2); top = ceil(0.3 * 4) = 2
    d = pbt_decision(3, objs, selection="reference", generator=random.Random(0))
    assert d.group == "bottom" and d.gap == math.inf
    assert (d.action, d.reason) == ("replace", "gap") and d.source in (0, 1)


# ----------------------------------------------------------------------------- DexPBT: a running trainer
def _trainer(mode="linear", total=1000):
    torch.manual_seed(0)
    env = make_env("pendulum", 4, seed=0, max_episode_steps=4)
    ac = make_actor_critic(3, 1, hidden_sizes=[8])
    collector = PopulationCollector(env, ac.actor, num_policies=1, frames_per_batch=4 * 4)
    loss = ClipPPOLoss(ac.actor, ac.critic)
    optim = torch.optim.Adam(loss.parameters(), lr=3e-4)
    sched = LearningRateSchedule(optim, mode=mode, total_frames=total)
    return OnPolicyTrainer(collector=collector, loss_module=loss, optimizer=optim, total_frames=total, num_epochs=2,
                           num_minibatches=1, value_estimator=GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic),
                           lr_schedule=sched, progress_bar=False, seed=0)


def test_lr_set_in_linear_mode_is_scaled_by_the_remaining_fraction():
    """Linear schedule: PBT's lr becomes lr0, the current rate lr0 * max(0, 1 - frames / total)."""
    trainer = _trainer()
    trainer.collected_frames = 250
    set_hyperparameter(trainer, "lr", 2e-3)
    assert get_hyperparameter(trainer, "lr") == 2e-3
    assert float(trainer.optimizer.param_groups[0]["lr"]) == pytest.approx(2e-3 * (1 - 250 / 1000))
    trainer.collected_frames = 1200  # past the horizon: 0, never negative
    set_hyperparameter(trainer, "lr", 2e-3)
    assert float(trainer.optimizer.param_groups[0]["lr"]) == 0.0
    trainer.collector.shutdown()


def test_num_epochs_is_rounded_and_must_stay_positive():
    """num_epochs is int(round(value)) (2.7 -> 3, 1.5 -> 2) and a value rounding below 1 raises."""
    trainer = _trainer()
    set_hyperparameter(trainer, "num_epochs", 2.7)
    assert trainer.num_epochs == 3 and isinstance(trainer.num_epochs, int)
    set_hyperparameter(trainer, "num_epochs", 1.5)
    assert trainer.num_epochs == 2
    for bad in (0, 0.4):
        with pytest.raises(ValueError, match="num_epochs must be >= 1"):
            set_hyperparameter(trainer, "num_epochs", bad)
    assert trainer.num_epochs == 2
    trainer.collector.shutdown()


# ----------------------------------------------------------------------------- PopulationCollector statistics
def _first_batch_and_stats(name, N, M, L, *, obs_dim, act_dim):
    """The first ``[N, L]`` batch of a PopulationCollector on task ``name`` (episodes of L steps) and its stats."""
    torch.manual_seed(0)
    env = make_env(name, N, seed=0, max_episode_steps=L)
    ac = make_actor_critic(obs_dim, act_dim, num_policies=M, latent_dim=2, hidden_sizes=(8,))
    collector = PopulationCollector(env, ac.actor, num_policies=M, frames_per_batch=N * L)
    batch = next(iter(collector))
    stats = collector.episode_stats()
    collector.shutdown()
    return batch, stats


def test_single_episode_per_policy_mean_is_that_episode():
    """With one finished episode per policy, the mean return / length is that episode's (count 1, not clamped to 2)."""
    M, L = 2, 5
    batch, stats = _first_batch_and_stats("pendulum", M, M, L, obs_dim=3, act_dim=1)
    assert stats["count"].tolist() == [1.0, 1.0]
    hand = batch["next", "reward"].squeeze(-1).double().sum(-1)  # env j is policy j: one whole episode each
    assert torch.allclose(stats["return"].double(), hand, rtol=1e-5)
    assert stats["length"].tolist() == [float(L)] * M


def test_every_present_episode_key_gets_a_per_policy_statistic():
    """Each present episode key (here both "success" and "true_objective") is averaged per policy at episode ends."""
    M, N, L = 2, 4, 6
    batch, stats = _first_batch_and_stats("reach_grasp_carry", N, M, L, obs_dim=10, act_dim=3)
    assert {"return", "length", "success", "true_objective", "count"} <= set(stats.keys())
    done = batch["next", "done"].squeeze(-1)
    pid = batch["policy_id"]
    for key in ("success", "true_objective", "episode_reward"):
        value = batch["next", key].squeeze(-1).double()
        hand = [value[(pid == p) & done].mean().item() for p in range(M)]
        got = stats["return" if key == "episode_reward" else key].double().tolist()
        assert got == pytest.approx(hand, rel=1e-5, abs=1e-6), key
