"""DexPBT's pure parts: Alg. 2 mutation statistics, Alg. 1 / reference-code selection on synthetic
objectives, Eq. 5's meta-objective, the spec data, and hyperparameters applied to a running
OnPolicyTrainer (read back and shown to be in effect)."""
from __future__ import annotations

import math
import pathlib
import random

import pytest
import torch
import yaml
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE
from torchrl.objectives.value.functional import generalized_advantage_estimate

from torchrl_sapg import OnPolicyTrainer, PopulationCollector, make_actor_critic, make_env
from torchrl_sapg.objectives import SAPGLoss
from torchrl_sapg.population.pbt import (
    HyperparameterSpec,
    get_hyperparameter,
    get_hyperparameters,
    meta_objective,
    mutate_hyperparameters,
    parse_hyperparameter_specs,
    pbt_decision,
    set_hyperparameter,
    set_hyperparameters,
)
from torchrl_sapg.trainers import LearningRateSchedule

REPO = pathlib.Path(__file__).resolve().parents[1]
N_DRAWS = 20_000


def _within(x: float, target: float, n: int, p: float, sigmas: float = 5.0) -> bool:
    """Binomial frequency check: |x - target| < sigmas * sd."""
    return abs(x - target) < sigmas * math.sqrt(p * (1 - p) / n)


# ---------------------------------------------------------------------------------- mutation
@pytest.mark.parametrize("beta", [0.2, 0.15])
def test_mutation_probability_and_factors(beta):
    specs = [HyperparameterSpec("lr")]
    g = random.Random(0)
    ratios = [mutate_hyperparameters({"lr": 1.0}, specs, prob=beta, generator=g)["lr"] for _ in range(N_DRAWS)]
    changed = [r for r in ratios if r != 1.0]
    assert _within(len(changed) / N_DRAWS, beta, N_DRAWS, beta)
    # every factor is mu or 1/mu with mu in [1.1, 1.5]
    for r in changed:
        assert 1.1 - 1e-12 <= r <= 1.5 + 1e-12 or 1 / 1.5 - 1e-12 <= r <= 1 / 1.1 + 1e-12, r
    up = [r for r in changed if r > 1]
    assert _within(len(up) / len(changed), 0.5, len(changed), 0.5)
    # mu ~ U(1.1, 1.5): mean 1.3, sd 0.4 / sqrt(12)
    mus = up + [1 / r for r in changed if r < 1]
    mean = sum(mus) / len(mus)
    assert abs(mean - 1.3) < 5 * (0.4 / math.sqrt(12)) / math.sqrt(len(mus))
    assert min(mus) < 1.11 and max(mus) > 1.49  # the whole range is used


def test_mutation_draw_order_is_documented():
    """z_mut, mu, z_dir from the generator, in this order, spec by spec."""
    specs = [HyperparameterSpec("a"), HyperparameterSpec("b", "discount"), HyperparameterSpec("c", "integer")]
    for seed in range(20):
        got = mutate_hyperparameters({"a": 2.0, "b": 0.9, "c": 4}, specs, prob=0.6, generator=random.Random(seed))
        g = random.Random(seed)
        want = {}
        if g.random() < 0.6:
            mu, up = g.uniform(1.1, 1.5), g.random() < 0.5
            want["a"] = 2.0 * mu if up else 2.0 / mu
        else:
            want["a"] = 2.0
        if g.random() < 0.6:
            mu, up = g.uniform(1.1, 1.5), g.random() < 0.5
            want["b"] = 1 - (0.1 * mu if up else 0.1 / mu)
        else:
            want["b"] = 0.9
        if g.random() < 0.6:
            want["c"] = 5 if g.random() < 0.5 else 3
        else:
            want["c"] = 4
        assert got["a"] == pytest.approx(want["a"], rel=1e-12)
        assert got["b"] == pytest.approx(want["b"], rel=1e-12)
        assert got["c"] == want["c"]


def test_discount_mutates_one_minus_x():
    specs = [HyperparameterSpec("gamma", "discount")]
    g = random.Random(1)
    seen = 0
    for _ in range(4000):
        new = mutate_hyperparameters({"gamma": 0.99}, specs, prob=1.0, generator=g)["gamma"]
        r = (1 - new) / 0.01
        assert 1.1 - 1e-9 <= r <= 1.5 + 1e-9 or 1 / 1.5 - 1e-9 <= r <= 1 / 1.1 + 1e-9, r
        assert 0.985 - 1e-12 <= new <= 1 - 0.01 / 1.5 + 1e-12  # never reaches or crosses 1
        seen += new > 0.99
    assert _within(seen / 4000, 0.5, 4000, 0.5)
    # a small gamma never goes below 0, and bounds clamp
    low = [mutate_hyperparameters({"gamma": 0.05}, specs, prob=1.0, generator=g)["gamma"] for _ in range(200)]
    assert min(low) == 0.0 and max(low) < 0.37
    bounded = [HyperparameterSpec("gamma", "discount", min=0.98, max=0.992)]
    vals = [mutate_hyperparameters({"gamma": 0.99}, bounded, prob=1.0, generator=g)["gamma"] for _ in range(500)]
    assert min(vals) >= 0.98 and max(vals) == 0.992


def test_integer_moves_by_one_within_bounds():
    specs = [HyperparameterSpec("num_epochs", "integer", min=1, max=8)]
    g = random.Random(2)
    mid = [mutate_hyperparameters({"num_epochs": 4}, specs, prob=0.2, generator=g)["num_epochs"] for _ in range(N_DRAWS)]
    assert set(mid) == {3, 4, 5} and all(isinstance(v, int) for v in mid)
    assert _within(mid.count(3) / N_DRAWS, 0.1, N_DRAWS, 0.1)
    assert _within(mid.count(5) / N_DRAWS, 0.1, N_DRAWS, 0.1)
    top = {mutate_hyperparameters({"num_epochs": 8}, specs, prob=1.0, generator=g)["num_epochs"] for _ in range(200)}
    bottom = {mutate_hyperparameters({"num_epochs": 1}, specs, prob=1.0, generator=g)["num_epochs"] for _ in range(200)}
    assert top == {7, 8} and bottom == {1, 2}


def test_clamping_and_special_cases():
    # the reference code's clip-epsilon range
    specs = [HyperparameterSpec("clip_epsilon", min=0.01, max=0.3)]
    g = random.Random(3)
    hi = [mutate_hyperparameters({"clip_epsilon": 0.29}, specs, prob=1.0, generator=g)["clip_epsilon"] for _ in range(500)]
    lo = [mutate_hyperparameters({"clip_epsilon": 0.011}, specs, prob=1.0, generator=g)["clip_epsilon"] for _ in range(500)]
    assert max(hi) == 0.3 and min(hi) >= 0.29 / 1.5 - 1e-12
    assert min(lo) == 0.01 and max(lo) <= 0.011 * 1.5 + 1e-12
    # keys without a spec are copied, a zero stays zero, a per-key prob overrides beta, seeds reproduce
    specs = [HyperparameterSpec("entropy_coeff"), HyperparameterSpec("x", prob=0.0)]
    out = mutate_hyperparameters({"entropy_coeff": 0.0, "x": 5.0, "other": "keep"}, specs, prob=1.0, generator=4)
    assert out == {"entropy_coeff": 0.0, "x": 5.0, "other": "keep"}
    a = mutate_hyperparameters({"lr": 1e-3}, [HyperparameterSpec("lr")], prob=0.5, generator=random.Random(9))
    b = mutate_hyperparameters({"lr": 1e-3}, [HyperparameterSpec("lr")], prob=0.5, generator=random.Random(9))
    assert a == b
    # a per-key perturbation range (the reference code mutates discounts by U(1.1, 1.2))
    narrow = [HyperparameterSpec("gamma", "discount", mu_min=1.1, mu_max=1.2)]
    r = [(1 - mutate_hyperparameters({"gamma": 0.9}, narrow, prob=1.0, generator=g)["gamma"]) / 0.1 for _ in range(300)]
    assert all(1.1 - 1e-9 <= x <= 1.2 + 1e-9 or 1 / 1.2 - 1e-9 <= x <= 1 / 1.1 + 1e-9 for x in r)
    with pytest.raises(KeyError, match="no value"):
        mutate_hyperparameters({}, [HyperparameterSpec("lr")], prob=1.0, generator=0)
    with pytest.raises(ValueError, match="mutations must be reproducible"):
        mutate_hyperparameters({"lr": 1.0}, [HyperparameterSpec("lr")], prob=1.0, generator=None)


def test_specs_are_data():
    specs = parse_hyperparameter_specs({
        "gamma": "discount",
        "num_epochs": {"kind": "integer", "min": 1, "max": 8},
        "lr": None,  # switched off
        "alpha_reach": {"kind": "multiplicative", "setter": "math:copysign", "init": 50.0},
    })
    assert [(s.name, s.kind) for s in specs] == [("gamma", "discount"), ("num_epochs", "integer"),
                                                 ("alpha_reach", "multiplicative")]
    assert parse_hyperparameter_specs([{"name": "lr"}])[0].kind == "multiplicative"
    nested = parse_hyperparameter_specs({"env": {"cfg": {"alpha_reach": {"kind": "multiplicative", "min": 1.0}}}})
    assert [(s.name, s.min) for s in nested] == [("env.cfg.alpha_reach", 1.0)]
    with pytest.raises(ValueError, match="kind"):
        parse_hyperparameter_specs({"lr": "additive"})
    with pytest.raises(ValueError, match="declared twice"):
        parse_hyperparameter_specs([{"name": "lr"}, {"name": "lr"}])
    with pytest.raises(ValueError, match="unknown fields"):
        parse_hyperparameter_specs([{"name": "lr", "maximum": 1}])
    with pytest.raises(ValueError, match="min=.* > max"):
        HyperparameterSpec("lr", min=2, max=1)
    # the shipped Hydra config: Table II's mutated RL parameters, the reference clamps
    cfg = yaml.safe_load((REPO / "recipes/conf/pbt/decentralized.yaml").read_text())
    shipped = {s.name: s for s in parse_hyperparameter_specs(cfg["hyperparameters"])}
    assert set(shipped) == {"gamma", "kl_threshold", "max_grad_norm", "clip_epsilon", "critic_coeff", "num_epochs"}
    assert shipped["gamma"].kind == "discount" and shipped["num_epochs"].kind == "integer"
    assert (shipped["clip_epsilon"].min, shipped["clip_epsilon"].max) == (0.01, 0.3)
    assert (shipped["num_epochs"].min, shipped["num_epochs"].max) == (1, 8)
    assert (cfg["mutation_prob"], cfg["mu_min"], cfg["mu_max"]) == (0.2, 1.1, 1.5)
    # the in-process population mutates the same set, with the same bounds (lr left to the adaptive rule)
    inprocess = yaml.safe_load((REPO / "recipes/conf/pbt/inprocess.yaml").read_text())["pbt"]
    assert parse_hyperparameter_specs(inprocess["hyperparameters"]) == list(shipped.values())
    assert (inprocess["mutation_prob"], inprocess["mu_min"], inprocess["mu_max"]) == (0.2, 1.1, 1.5)
    assert (cfg["interval_frames"], cfg["start_frames"], cfg["burn_in_frames"]) == (20_000_000, 200_000_000, 50_000_000)
    assert yaml.safe_load((REPO / "recipes/conf/pbt/off.yaml").read_text()) == {"mode": "off"}


# ---------------------------------------------------------------------------------- selection
OBJS10 = {0: 9.0, 1: 1.0, 2: 5.0, 3: 0.5, 4: 7.0, 5: 6.0, 6: 2.0, 7: 8.0, 8: 3.0, 9: 4.0}


def test_paper_split_30_40_30():
    g = random.Random(0)
    top, middle, bottom = [0, 7, 4], [5, 2, 9, 8], [6, 1, 3]
    for m in top:
        d = pbt_decision(m, OBJS10, generator=g)
        assert (d.group, d.action, d.source) == ("top", "continue", None)
    for m in middle:
        d = pbt_decision(m, OBJS10, generator=g)
        assert (d.group, d.action, d.hyperparameters_from) == ("middle", "mutate", m)
    counts = {m: 0 for m in top}
    for m in bottom:
        for _ in range(600):
            d = pbt_decision(m, OBJS10, generator=g)
            assert (d.group, d.action) == ("bottom", "replace") and d.hyperparameters_from == d.source
            counts[d.source] += 1
    for m in top:  # a random top member, uniformly
        assert _within(counts[m] / 1800, 1 / 3, 1800, 1 / 3)
    d = pbt_decision(3, OBJS10, generator=g)
    assert (d.num_members, d.num_top, d.num_bottom, d.rank, d.ranking[:3]) == (10, 3, 3, 9, [0, 7, 4])


def test_ties_share_the_better_group_and_equals_never_replace():
    same = {m: 1.0 for m in range(6)}
    assert {pbt_decision(m, same, generator=0).action for m in same} == {"continue"}
    # 10 members; the value 5 is held by ranks 2..5 -> all of them are top (rank 2 < 3)
    objs = {0: 9.0, 1: 8.0, 2: 5.0, 3: 5.0, 4: 5.0, 5: 5.0, 6: 4.0, 7: 3.0, 8: 2.0, 9: 1.0}
    for m in (2, 3, 4, 5):
        d = pbt_decision(m, objs, generator=0)
        assert (d.rank, d.group) == (2, "top")
    assert pbt_decision(6, objs, generator=0).group == "middle"
    # a bottom member tied with the whole top block: no strictly better top member
    tied = {0: 2.0, 1: 1.0, 2: 1.0, 3: 1.0}
    assert pbt_decision(1, tied, generator=0).group == "top"


def test_missing_members_rank_last_and_block_nobody():
    objs = {0: 3.0, 1: None, 2: 2.0, 3: float("nan"), 4: 1.0, 5: math.inf}
    g = random.Random(0)
    d = pbt_decision(4, objs, generator=g)  # ranks: 0, 2, 4 known; 1, 3, 5 share the last rank 5
    assert (d.num_known, d.rank, d.group) == (3, 2, "middle")
    for m in (1, 3, 5):
        d = pbt_decision(m, objs, generator=g)
        assert (d.rank, d.group, d.action) == (5, "bottom", "replace")
        assert d.source in (0, 2) and d.objective is None  # top = ceil(0.3*6) = 2 known members
    # nobody has an objective: nothing to copy
    d = pbt_decision(0, {0: None, 1: None}, generator=g)
    assert (d.group, d.action, d.reason) == ("bottom", "continue", "no_better_top")
    # two members: the better continues, the worse copies it
    assert pbt_decision(0, {0: -100.0, 1: -90.0}, generator=g).source == 1
    assert pbt_decision(1, {0: -100.0, 1: -90.0}, generator=g).action == "continue"
    with pytest.raises(KeyError, match="own objective"):
        pbt_decision(7, {0: 1.0}, generator=g)


def test_reference_rule():
    g = random.Random(0)
    # P = 8: ceil(0.125*8) = 1 bottom member, ceil(0.3*8) = 3 top; middle members do nothing
    objs = {0: 10.0, 1: 9.0, 2: 8.0, 3: 7.0, 4: 6.0, 5: 5.0, 6: 4.0, 7: 0.0}
    d = pbt_decision(6, objs, selection="reference", generator=g)
    assert (d.group, d.action, d.num_bottom) == ("middle", "continue", 1)
    d = pbt_decision(7, objs, selection="reference", generator=g)
    # sigma without the worst floor(0.2*8) = 1 value: std(4..10) = 2
    assert d.sigma == pytest.approx(2.0) and d.action == "replace" and d.reason == "gap"
    assert d.gap == pytest.approx(objs[d.source] - 0.0)
    # gap below 0.5 sigma: keep the weights, mutate own hyperparameters
    # (one far-ahead leader makes sigma large: the two other top members are too close to copy)
    close = {0: 100.0, 1: 1.02, 2: 1.01, 3: 1.0, 4: 1.0, 5: 1.0, 6: 1.0, 7: 0.99}
    outcomes = set()
    for _ in range(200):
        d = pbt_decision(7, close, selection="reference", generator=g)
        if d.source_objective == 100.0:
            assert (d.action, d.reason, d.source) == ("replace", "gap", 0)
        else:
            assert (d.action, d.reason, d.source, d.hyperparameters_from) == ("mutate", "small_gap", None, 7)
            assert d.gap < 0.5 * d.sigma
        outcomes.add(d.action)
    assert outcomes == {"replace", "mutate"}
    # gap above 0.5 sigma but below 0.05*|candidate|: no replacement either
    big = {0: 1000.0, 1: 1001.0, 2: 1002.0, 3: 1003.0, 4: 1004.0, 5: 1005.0, 6: 1006.0, 7: 990.0}
    d = pbt_decision(7, big, selection="reference", generator=g)
    assert d.gap > 0.5 * d.sigma and d.action == "mutate" and d.reason == "small_gap"
    # sigma without the worst 20%: a crashed outlier does not inflate it
    outlier = {0: 10.0, 1: 10.0, 2: 10.0, 3: 9.0, 4: 9.0, 5: 9.0, 6: 9.0, 7: 8.0, 8: 7.5, 9: -1000.0}
    d = pbt_decision(8, outlier, selection="reference", bottom_fraction=0.2, generator=g)
    assert d.group == "bottom" and d.sigma == pytest.approx(math.sqrt(0.4375))  # std of the 8 best
    assert (d.action, d.gap) == ("replace", 2.5)
    d = pbt_decision(8, outlier, selection="reference", bottom_fraction=0.2, sigma_drop_worst=0.0, generator=g)
    assert d.action == "mutate"  # with the outlier, sigma ~ 303 blocks the replacement
    # the reference code needs more than max(2, P // 2) known objectives
    few = {0: 5.0, 1: None, 2: None, 3: None, 4: None, 5: None, 6: None, 7: 1.0}
    assert pbt_decision(7, few, selection="reference", generator=g).reason == "not_enough_members"
    # the coin: after a replacement the hyperparameters are the candidate's or own, 50/50
    froms = [pbt_decision(7, objs, selection="reference", generator=g).hyperparameters_from for _ in range(2000)]
    own = sum(f == 7 for f in froms) / 2000
    assert _within(own, 0.5, 2000, 0.5)


def test_rules_mix():
    # the paper's split with the reference gap rule
    d = pbt_decision(3, OBJS10, gap_rule=True, generator=0)
    assert d.group == "bottom" and d.reason in ("gap", "small_gap") and d.sigma > 0
    # the reference bottom fraction with middle mutation
    d = pbt_decision(6, OBJS10, selection="reference", mutate_middle=True, generator=0)  # rank 7 of 10
    assert (d.group, d.action) == ("middle", "mutate")


# ---------------------------------------------------------------------------------- meta-objective
def test_meta_objective():
    eps0, eps_star = 0.075, 0.01
    assert meta_objective(eps0, eps0, eps_star, 0.0) == 0.0
    assert meta_objective(0.0425, eps0, eps_star, 2.0) == pytest.approx(0.5 + 0.02)
    assert meta_objective(eps_star, eps0, eps_star, 7.0) == 8.0
    # reaching the final tolerance always beats any success count before it (for N_succ < 100)
    assert meta_objective(eps_star + 1e-6, eps0, eps_star, 50.0) < meta_objective(eps_star, eps0, eps_star, 0.0) + 0.5
    eps = torch.tensor([0.075, 0.0425, 0.01])
    out = meta_objective(eps, eps0, eps_star, torch.tensor([1.0, 2.0, 3.0]))
    assert torch.allclose(out, torch.tensor([0.01, 0.52, 4.0]))
    with pytest.raises(ValueError, match="eps0 > eps_star"):
        meta_objective(0.05, 0.01, 0.02, 0.0)


# ---------------------------------------------------------------------------------- a running trainer
def _trainer(*, mode="fixed", num_epochs=2, num_minibatches=2, num_envs=16, horizon=8, total=10_000, seed=0):
    torch.manual_seed(seed)
    env = make_env("pendulum", num_envs, seed=seed, max_episode_steps=horizon)
    ac = make_actor_critic(3, 1, hidden_sizes=[16])
    collector = PopulationCollector(env, ac.actor, num_policies=1, frames_per_batch=num_envs * horizon)
    loss = ClipPPOLoss(ac.actor, ac.critic, clip_epsilon=0.2, entropy_coeff=0.01, critic_coeff=2.0)
    gae = GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic)
    optim = torch.optim.Adam(loss.parameters(), lr=3e-4)
    sched = LearningRateSchedule(optim, mode=mode, total_frames=total)
    trainer = OnPolicyTrainer(
        collector=collector, loss_module=loss, optimizer=optim, total_frames=total, num_epochs=num_epochs,
        num_minibatches=num_minibatches, value_estimator=gae, lr_schedule=sched, progress_bar=False, seed=seed,
        obs_normalizers=[ac.obs_normalizer],
    )
    return trainer, ac


def _set_torque(trainer, value):
    trainer._test_torque = value


def test_hyperparameters_on_a_running_trainer_are_read_back_in_place():
    trainer, ac = _trainer()
    lr_tensor = trainer.optimizer.param_groups[0]["lr"]
    clip = trainer.loss_module.clip_epsilon
    gamma_buf = trainer.value_estimator.gamma
    values = {"lr": 1.25e-3, "clip_epsilon": 0.123, "entropy_coeff": 0.02, "critic_coeff": 3.5, "gamma": 0.97,
              "lmbda": 0.9, "num_epochs": 3, "max_grad_norm": 0.7, "reward_scale": 0.5, "kl_threshold": 0.02,
              "env.max_torque": 1.5}
    set_hyperparameters(trainer, values)
    for name, value in values.items():
        assert get_hyperparameter(trainer, name) == pytest.approx(value, rel=1e-6), name
    # in place: the optimiser, loss and estimator keep the very same tensors
    assert trainer.optimizer.param_groups[0]["lr"] is lr_tensor and float(lr_tensor) == pytest.approx(1.25e-3)
    assert trainer.loss_module.clip_epsilon is clip and trainer.value_estimator.gamma is gamma_buf
    assert trainer.num_epochs == 3 and isinstance(trainer.num_epochs, int)
    assert trainer.optimization_stepper.max_grad_norm == 0.7 and trainer.lr_schedule.kl_threshold == 0.02
    base = trainer.collector.env.base_env
    assert base.max_torque == 1.5 and type(base).max_torque == 2.0  # the instance, not the class
    # a user-declared env coefficient with its own setter (an init value when there is no getter)
    specs = [HyperparameterSpec("alpha_reach", setter=_set_torque, init=50.0), HyperparameterSpec("lr")]
    assert get_hyperparameters(trainer, specs) == {"alpha_reach": 50.0, "lr": pytest.approx(1.25e-3)}
    set_hyperparameters(trainer, {"alpha_reach": 60.0}, specs)
    assert trainer._test_torque == 60.0
    with pytest.raises(KeyError, match="not built in"):
        get_hyperparameter(trainer, "alpha_reach")
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        get_hyperparameter(trainer, "env.nonexistent")


def test_hyperparameters_are_in_effect():
    # num_epochs: the optimiser-step count of the next iteration; lr: Adam's first step moves each
    # parameter by ~lr; gamma / lmbda: GAE's advantages; clip_epsilon: the loss's clip fraction
    trainer, ac = _trainer(num_epochs=1, num_minibatches=1, total=16 * 8 * 2)
    set_hyperparameters(trainer, {"num_epochs": 3, "lr": 2e-3, "gamma": 0.9, "lmbda": 0.8})
    before = {k: v.detach().clone() for k, v in ac.actor.named_parameters()}
    batches = []
    trainer.register_op("batch_process", lambda b: batches.append(b.clone()) or b)
    steps = []
    trainer.register_op("post_optim", lambda: steps.append(1))
    trainer.total_frames = 16 * 8
    trainer.train()
    assert len(steps) == 3  # 3 epochs x 1 minibatch
    moved = max(float((p.detach() - before[k]).abs().max()) for k, p in ac.actor.named_parameters())
    assert 2e-3 * 0.9 < moved <= 3 * 2e-3 * 1.2  # three Adam steps of ~lr (2e-3, not 3e-4) each
    # the stored advantages are GAE(gamma=0.9, lambda=0.8) of the stored values, not (0.99, 0.95)
    batch = batches[0]
    args = (batch["state_value"], batch["next", "state_value"], batch["next", "reward"],
            batch["next", "done"], batch["next", "terminated"])
    adv, _ = generalized_advantage_estimate(0.9, 0.8, *args, time_dim=-2)
    adv_default, _ = generalized_advantage_estimate(0.99, 0.95, *args, time_dim=-2)
    assert torch.allclose(batch["advantage"], adv, atol=1e-5)
    assert not torch.allclose(batch["advantage"], adv_default, atol=1e-2)
    # clip epsilon: the loss reads the buffer PBT wrote
    loss = trainer.loss_module
    with torch.no_grad():
        for p in ac.actor.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fractions = []
    for eps in (0.01, 0.3):
        set_hyperparameter(trainer, "clip_epsilon", eps)
        fractions.append(float(loss(batch.reshape(-1))["clip_fraction"]))
    assert fractions[0] > fractions[1] + 0.1


def test_lr_in_linear_schedule_mode_and_sapg_specifics():
    trainer, _ = _trainer(mode="linear", total=1000)
    trainer.collected_frames = 500
    set_hyperparameter(trainer, "lr", 1e-3)
    assert get_hyperparameter(trainer, "lr") == 1e-3  # lr0 of the schedule
    assert float(trainer.optimizer.param_groups[0]["lr"]) == pytest.approx(5e-4)
    # SAPGLoss: gamma also drives its one-step off-policy target; entropy is per policy
    env = make_env("pendulum", 8, seed=0)
    ac = make_actor_critic(3, 1, num_policies=2, latent_dim=4, hidden_sizes=[8])
    loss = SAPGLoss(ac.actor, ac.critic, num_policies=2, gamma=0.99)
    collector = PopulationCollector(env, ac.actor, num_policies=2, frames_per_batch=8 * 4)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-3)
    trainer = OnPolicyTrainer(collector=collector, loss_module=loss, optimizer=optim, total_frames=64, num_epochs=1,
                              num_minibatches=1, value_estimator=GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic),
                              progress_bar=False)
    set_hyperparameter(trainer, "gamma", 0.95)
    assert loss.gamma == 0.95 and float(trainer.value_estimator.gamma) == pytest.approx(0.95)
    with pytest.raises(AttributeError, match="per-policy entropy_coeffs"):
        get_hyperparameter(trainer, "entropy_coeff")
    set_hyperparameter(trainer, "off_policy_coeff", 0.5)
    assert float(loss.off_policy_coeff) == 0.5
    collector.shutdown()
