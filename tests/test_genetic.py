"""EPO's GeneticLatentScheduler: selection / crossover / mutation by hand, the reference-code bugs,
Eq. 3 and its edge cases, fitness bookkeeping, state, and a real OnPolicyTrainer run."""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.envs import TransformedEnv
from torchrl.envs.transforms import RewardScaling
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from torchrl_sapg import OnPolicyTrainer, PolicyLatents, PopulationCollector, make_actor_critic, make_env
from torchrl_sapg.objectives import SAPGLoss
from torchrl_sapg.population import GeneticLatentScheduler, GeneticStepReport
from torchrl_sapg.trainers import load_checkpoint


def _latents(M=6, D=3, seed=0):
    return PolicyLatents(M, D, generator=torch.Generator().manual_seed(seed))


def _sched(latents, **kw):
    kw.setdefault("seed", 0)
    return GeneticLatentScheduler(latents=latents, **kw)


def _expected_draws(seed, E, R, D, std):
    """The documented draw order: a ~ U{0..E-1}, b ~ U{0..E-2}, b += b >= a, noise ~ N(0, 1) * std."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, E, (R,), generator=g)
    b = torch.randint(0, E - 1, (R,), generator=g)
    b = b + (b >= a).long()
    noise = torch.randn(R, D, generator=g) * std
    return a, b, noise


# ----------------------------------------------------------------------------- selection / crossover / mutation
def test_selection_and_crossover_without_mutation():
    latents = _latents(M=7, D=3)
    w0 = latents.weight.detach().clone()
    sched = _sched(latents, num_elites=3, mutation_std=0.0)
    #                     master  1    2    3    4    5    6
    fitness = torch.tensor([0.0, 5.0, 1.0, 9.0, 3.0, 7.0, 2.0])
    report = sched.step(100, fitness)
    assert report.triggered and report.reason == "spread"
    assert report.elites == [3, 5, 1]  # best first
    assert report.replaced == [4, 6, 2]  # least bad first
    w = latents.weight.detach()
    for row, (i, j) in zip(report.replaced, report.parents):
        assert i != j and {i, j} <= {1, 3, 5}
        assert torch.equal(w[row], 0.5 * (w0[i] + w0[j]))
    for row in (0, 1, 3, 5):  # master and elites: bitwise untouched
        assert torch.equal(w[row], w0[row])
    assert report.spread == 8.0 and report.median == 4.0 and report.threshold == pytest.approx(1.2)


def test_exact_parents_and_rows_under_a_fixed_seed():
    latents = _latents(M=8, D=5, seed=3)
    w0 = latents.weight.detach().clone()
    sched = _sched(latents, num_elites=3, mutation_std=0.25, seed=123)
    fitness = torch.tensor([0.0, 1.0, 7.0, 3.0, 6.0, 2.0, 8.0, 4.0])
    report = sched.step(0, fitness)
    elites = torch.tensor([6, 2, 4])
    replaced = [7, 3, 5, 1]
    a, b, noise = _expected_draws(123, E=3, R=4, D=5, std=0.25)
    assert report.elites == elites.tolist() and report.replaced == replaced
    assert report.parents == list(zip(elites[a].tolist(), elites[b].tolist()))
    expected = 0.5 * (w0[elites[a]] + w0[elites[b]]) + noise
    assert torch.equal(latents.weight.detach()[replaced], expected)


def test_mutation_statistics_and_distinct_parents():
    M, D, s = 202, 16, 0.3
    latents = _latents(M=M, D=D, seed=1)
    w0 = latents.weight.detach().clone()
    sched = _sched(latents, num_elites=2, mutation_std=s, seed=7)
    fitness = torch.arange(M, dtype=torch.float32)  # the two best followers: 201, 200
    report = sched.step(0, fitness)
    assert report.elites == [201, 200] and len(report.replaced) == 199
    pa = torch.tensor([p[0] for p in report.parents])
    pb = torch.tensor([p[1] for p in report.parents])
    assert (pa != pb).all()
    residual = latents.weight.detach()[report.replaced] - 0.5 * (w0[pa] + w0[pb])
    assert residual.std().item() == pytest.approx(s, rel=0.05)  # 3184 draws: ~1.3% standard error
    assert abs(residual.mean().item()) < 4 * s / math.sqrt(residual.numel())


def test_crossover_draws_cover_all_distinct_pairs():
    latents = _latents(M=104, D=2)
    sched = _sched(latents, num_elites=3, mutation_std=0.0, seed=0)
    report = sched.step(0, torch.arange(104.0))
    pairs = {tuple(p) for p in report.parents}
    assert pairs == {(i, j) for i in (103, 102, 101) for j in (103, 102, 101) if i != j}


# ----------------------------------------------------------------------------- the reference-code bugs
def test_replaced_rows_keep_learning_and_only_their_adam_moments_reset():
    """Reference bug: the merged latent became a new Parameter the optimiser never saw."""
    torch.manual_seed(0)
    latents = _latents(M=6, D=4)
    log_std = nn.Parameter(torch.randn(6, 2))
    other = nn.Parameter(torch.randn(3))
    opt = torch.optim.Adam([latents.weight, log_std, other], lr=0.05)
    target = torch.randn(6, 4)

    def adam_step():
        opt.zero_grad()
        loss = ((latents.weight - target) ** 2).sum() + (log_std**2).sum() + (other**2).sum()
        loss.backward()
        opt.step()

    for _ in range(3):
        adam_step()
    param = latents.weight
    before = {p: {k: v.clone() for k, v in opt.state[p].items()} for p in (latents.weight, log_std, other)}
    ls0 = log_std.detach().clone()
    sched = _sched(latents, optimizer=opt, log_std=log_std, num_elites=3, mutation_std=0.1)
    report = sched.step(10, torch.tensor([-100.0, 4.0, 3.0, 2.0, 1.0, 0.0]))
    R, kept = report.replaced, [0, 1, 2, 3]
    assert R == [4, 5]
    # the same Parameter object, the one the optimiser holds
    assert latents.weight is param and opt.param_groups[0]["params"][0] is latents.weight
    for p in (latents.weight, log_std):
        state = opt.state[p]
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.count_nonzero(state[key][R]) == 0
            assert torch.equal(state[key][kept], before[p][key][kept])
        assert torch.equal(state["step"], before[p]["step"])  # per-parameter scalar: untouched
    for key, value in opt.state[other].items():
        assert torch.equal(value, before[other][key])
    # log_std of a child = mean of its parents' rows; others untouched
    for row, (i, j) in zip(R, report.parents):
        assert torch.equal(log_std.detach()[row], 0.5 * (ls0[i] + ls0[j]))
    assert torch.equal(log_std.detach()[kept], ls0[kept])
    # one real Adam step: every replaced entry moves
    after = latents.weight.detach().clone()
    adam_step()
    assert (latents.weight.detach()[R] != after[R]).all()


def test_other_optimizers_state_rows_are_reset():
    latents = _latents(M=5, D=2)
    opt = torch.optim.SGD(latents.parameters(), lr=0.1, momentum=0.9)
    latents.weight.sum().backward()
    opt.step()
    buf = opt.state[latents.weight]["momentum_buffer"]
    sched = _sched(latents, optimizer=opt)
    report = sched.step(0, torch.tensor([0.0, 4.0, 3.0, 2.0, 1.0]))
    assert report.replaced == [4]
    assert torch.count_nonzero(buf[4]) == 0 and torch.count_nonzero(buf[:4]) == 8


@pytest.mark.parametrize("leader_id", [0, 2])
def test_master_is_never_replaced_even_when_worst(leader_id):
    latents = _latents(M=5, D=3)
    log_std = nn.Parameter(torch.randn(5, 1))
    opt = torch.optim.Adam([latents.weight, log_std], lr=0.1)
    (latents.weight.sum() + log_std.sum()).backward()
    opt.step()
    w0, ls0 = latents.weight.detach().clone(), log_std.detach().clone()
    m0 = opt.state[latents.weight]["exp_avg"][leader_id].clone()
    fitness = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    fitness[leader_id] = -1e9  # the master is by far the worst
    sched = _sched(latents, optimizer=opt, log_std=log_std, leader_id=leader_id, num_elites=2, mutation_std=1.0)
    for frames in range(5):
        report = sched.step(frames, fitness)
        assert report.triggered and leader_id not in report.replaced + report.elites
    assert torch.equal(latents.weight.detach()[leader_id], w0[leader_id])
    assert torch.equal(log_std.detach()[leader_id], ls0[leader_id])
    assert torch.equal(opt.state[latents.weight]["exp_avg"][leader_id], m0)


# ----------------------------------------------------------------------------- Eq. 3 and the decision rules
def test_eq3_trigger_small_and_large_spread():
    sched = _sched(_latents(M=5), gamma=0.3)
    r = sched.step(0, torch.tensor([0.0, 10.0, 10.5, 11.0, 10.2]))  # 1.0 < 0.3 * 10.35
    assert not r.triggered and r.reason == "small_spread" and r.median == pytest.approx(10.35)
    assert r.replaced == [] and r.diversity_before == r.diversity_after
    r = sched.step(1, torch.tensor([0.0, 10.0, 20.0, 11.0, 12.0]))  # 10 > 0.3 * 11.5
    assert r.triggered and r.reason == "spread" and r.replaced == [1]
    # strict inequality: spread 2 == 0.5 * median 4 does not fire
    sched = _sched(_latents(M=4), gamma=0.5)
    assert sched.step(0, torch.tensor([0.0, 3.0, 4.0, 5.0])).reason == "small_spread"
    assert sched.step(0, torch.tensor([0.0, 3.0, 4.0, 5.01])).reason == "spread"


def test_negative_and_zero_median_rule():
    sched = _sched(_latents(M=4), gamma=0.3)
    # Pendulum-like costs: the literal Eq. 3 (threshold 0.3 * -1200 < 0) would fire on any spread
    r = sched.step(0, torch.tensor([0.0, -1200.0, -1100.0, -1300.0]))
    assert r.reason == "small_spread" and r.threshold == pytest.approx(360.0)
    r = sched.step(0, torch.tensor([0.0, -1200.0, -400.0, -1300.0]))  # 900 > 0.3 * |-1200|
    assert r.triggered and r.replaced == [3]
    # zero median: identical fitnesses never fire, any positive spread does (unless min_spread)
    assert sched.step(0, torch.zeros(4)).reason == "small_spread"
    assert sched.step(0, torch.tensor([0.0, 0.0, 0.0, 1.0])).reason == "spread"
    floored = _sched(_latents(M=4), gamma=0.3, min_spread=2.0)
    assert floored.step(0, torch.tensor([0.0, 0.0, 0.0, 1.0])).reason == "small_spread"


def test_median_of_an_even_number_of_followers_is_interpolated():
    r = _sched(_latents(M=5), gamma=10.0).step(0, torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0]))
    assert r.median == 2.5 and r.spread == 9.0 and r.reason == "small_spread"


def test_nan_fitness_skip_and_rank_last():
    fitness = torch.tensor([float("nan"), 5.0, float("nan"), 1.0, 9.0])
    skip = _sched(_latents(M=5))
    r = skip.step(0, fitness)
    assert not r.triggered and r.reason == "missing_fitness" and r.missing == [2]
    # the master's NaN alone does not block a step
    r = skip.step(0, torch.tensor([float("nan"), 5.0, 2.0, 1.0, 9.0]))
    assert r.triggered and r.replaced == [3]
    rank_last = _sched(_latents(M=5), missing_fitness="rank_last")
    r = rank_last.step(0, fitness)
    assert r.triggered and r.replaced == [2] and r.elites == [4, 1, 3]
    assert r.spread == 8.0 and r.median == 5.0  # over the known followers only
    # fewer than two known followers: nothing to compare
    nan = float("nan")
    assert rank_last.step(0, torch.tensor([0.0, 1.0, nan, nan, nan])).reason == "missing_fitness"


def test_warmup_and_minimum_interval():
    sched = _sched(_latents(M=4), warmup_frames=1000, interval_frames=500)
    big = torch.tensor([0.0, 1.0, 5.0, 10.0])
    assert sched.step(900, big).reason == "warmup"
    assert sched.step(1000, big).triggered
    assert sched.step(1400, big).reason == "too_soon"
    assert sched.step(1500, big).triggered and sched.last_step_frames == 1500
    assert sched.step(1999, big).reason == "too_soon"
    assert sched.step(2100, torch.tensor([0.0, 10.0, 10.1, 10.2])).reason == "small_spread"
    assert sched.step(2200, big).triggered  # the interval counts from the last *step*
    assert sched.num_steps == 3 and sched.num_skipped == {
        "warmup": 1, "too_soon": 2, "missing_fitness": 0, "small_spread": 1}


def test_interval_mode_ignores_eq3():
    sched = _sched(_latents(M=4), trigger="interval", warmup_frames=100, interval_frames=200)
    flat = torch.tensor([0.0, 10.0, 10.0, 10.0])  # no spread at all
    assert sched.step(50, flat).reason == "warmup"
    r = sched.step(100, flat)
    assert r.triggered and r.reason == "interval" and r.replaced == [3]  # ties: lower id ranks first
    assert sched.step(250, flat).reason == "too_soon"
    assert sched.step(300, flat).reason == "interval"
    assert sched.step(500, torch.tensor([0.0, 10.0, float("nan"), 10.0])).reason == "missing_fitness"
    with pytest.raises(ValueError, match="interval_frames > 0"):
        _sched(_latents(M=4), trigger="interval")


def test_determinism_under_a_seed():
    def run(seed):
        latents = _latents(M=6, D=4, seed=0)
        sched = _sched(latents, seed=seed, num_elites=2, mutation_std=0.5)
        reports = [sched.step(i, torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, float(i)])) for i in range(4)]
        return latents.weight.detach().clone(), [r.parents for r in reports]

    w1, p1 = run(5)
    w2, p2 = run(5)
    w3, _ = run(6)
    assert torch.equal(w1, w2) and p1 == p2 and not torch.equal(w1, w3)
    # no generator and no seed: seeded from torch's global RNG
    torch.manual_seed(11)
    a = GeneticLatentScheduler(latents=_latents(M=4)).generator.initial_seed()
    torch.manual_seed(11)
    assert GeneticLatentScheduler(latents=_latents(M=4)).generator.initial_seed() == a


def test_latent_diversity_report():
    latents = PolicyLatents(4, 2)
    with torch.no_grad():
        latents.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0], [3.0, 4.0]]))
    sched = _sched(latents, num_elites=2, mutation_std=0.0)
    # pairwise distances: 0, 5, 5, 5, 5, 0 -> mean 20/6
    r = sched.step(0, torch.tensor([0.0, 1.0, 2.0, 0.5]))  # elites 2, 1; row 3 <- (0 + (3, 4)) / 2
    assert r.diversity_before == pytest.approx(20 / 6)
    assert torch.equal(latents.weight.detach()[3], torch.tensor([1.5, 2.0]))
    assert r.diversity_after == pytest.approx((0 + 5 + 2.5 + 5 + 2.5 + 2.5) / 6)
    m = sched.metrics()
    assert m["epo/triggered"] == 1.0 and m["epo/num_replaced"] == 1.0 and m["epo/fitness_spread"] == 1.5
    assert m["epo/latent_diversity"] == pytest.approx(r.diversity_after)
    assert m["epo/num_genetic_steps"] == 1.0 and m["epo/num_decisions"] == 1.0


# ----------------------------------------------------------------------------- fitness bookkeeping
def _batch(pid, done, ret, length, off_policy=None):
    N, T = pid.shape
    td = TensorDict(
        {"policy_id": pid, "next": {"done": done.unsqueeze(-1), "episode_reward": ret.unsqueeze(-1),
                                    "step_count": length.unsqueeze(-1)}},
        [N, T],
    )
    if off_policy is not None:
        td.set("off_policy", off_policy)
    return td


def test_fitness_comes_from_each_policys_own_rows_and_ignores_off_policy_rows():
    M, per, T = 4, 2, 3
    pid = torch.arange(M).repeat_interleave(per).unsqueeze(-1).expand(M * per, T).clone()
    done = torch.zeros(M * per, T, dtype=torch.bool)
    done[:, 1] = True  # every env ends one episode at t = 1
    ret = (100.0 * pid + torch.arange(M * per).unsqueeze(-1)).float()  # env e of policy i: 100 i + e
    length = torch.full((M * per, T), 7)
    sched = _sched(_latents(M=M))
    # SAPG-style relabelled rows (leader id, flagged off-policy) with absurd values must not count
    relabel = _batch(torch.zeros(2, T, dtype=torch.long), torch.ones(2, T, dtype=torch.bool),
                     torch.full((2, T), -1e6), torch.ones(2, T, dtype=torch.long))
    batch = torch.cat([_batch(pid, done, ret, length), relabel], 0)
    batch.set("off_policy", torch.cat([torch.zeros(M * per, T, dtype=torch.bool), torch.ones(2, T, dtype=torch.bool)]))
    sched.observe(batch)
    expected = torch.tensor([100.0 * i + (2 * i + 2 * i + 1) / 2 for i in range(M)], dtype=torch.float64)
    assert torch.equal(sched.fitness(), expected)
    sched.observe(_batch(pid, done, ret + 10, length))  # a second batch: the window's mean
    assert torch.allclose(sched.fitness(), expected + 5)
    # the same numbers through a collector's episode_stats read
    alt = _sched(_latents(M=M))
    alt.observe_stats({"return": expected.float(), "count": torch.full((M,), 2.0)})
    alt.observe_stats({"return": torch.full((M,), float("nan")), "count": torch.zeros(M)})
    assert torch.allclose(alt.fitness(), expected)
    with pytest.raises(ValueError, match=r"\[M=4\]"):
        alt.observe_stats({"return": torch.zeros(3), "count": torch.zeros(3)})


def test_children_are_credited_only_with_episodes_started_after_their_birth():
    M = 4
    sched = _sched(_latents(M=M), mutation_std=0.0)
    pid = torch.arange(M).unsqueeze(-1).expand(M, 4).clone()  # one env per policy, T = 4
    done = torch.zeros(M, 4, dtype=torch.bool)
    done[:, 1] = True
    sched.observe(_batch(pid, done, torch.ones(M, 4), torch.full((M, 4), 50)))
    report = sched.step(16, sched.fitness() + torch.tensor([0.0, 3.0, 2.0, 1.0]))
    assert report.replaced == [3]
    assert torch.isnan(sched.fitness()).all()  # a fresh window for everyone after a step
    # next batch: every env ends an episode at t = 1; policy 3's child lived 2 steps by then
    length = torch.full((M, 4), 50)
    sched.observe(_batch(pid, done, torch.full((M, 4), 2.0), length))
    f = sched.fitness()
    assert f[:3].tolist() == [2.0, 2.0, 2.0] and math.isnan(f[3])  # the 50-step episode began before
    length[3, 1] = 2  # an episode that started at the child's first step counts
    sched.observe(_batch(pid, done, torch.full((M, 4), 4.0), length))
    assert sched.fitness()[3] == 4.0
    length[3, 1] = 7  # 4 + 4 + 2 = 10 steps since birth at t = 1 of the third batch: 7 <= 10
    sched.observe(_batch(pid, done, torch.full((M, 4), 6.0), length))
    assert sched.fitness()[3] == 5.0
    assert sched.step(100).triggered is False  # all equal but policy 3: spread 1 < 0.3 * 4
    with pytest.raises(KeyError, match="episode_reward"):
        sched.observe(TensorDict({"policy_id": pid, "next": {"done": done}}, [M, 4]))


def test_fitness_decay_weights_recent_batches():
    sched = _sched(_latents(M=4), fitness_decay=0.5)
    pid = torch.arange(4).unsqueeze(-1)
    done = torch.ones(4, 1, dtype=torch.bool)
    for value in (0.0, 3.0):
        sched.observe(_batch(pid, done, torch.full((4, 1), value), torch.ones(4, 1, dtype=torch.long)))
    assert sched.fitness().tolist() == [2.0] * 4  # (0.5 * 0 + 3) / (0.5 + 1)


# ----------------------------------------------------------------------------- errors, state
def test_clear_errors():
    latents = _latents(M=5)
    with pytest.raises(ValueError, match="num_elites=1 is out of range"):
        _sched(latents, num_elites=1)
    with pytest.raises(ValueError, match=r"2 <= num_elites <= 3"):
        _sched(latents, num_elites=4)
    with pytest.raises(ValueError, match="num_policies >= 4"):
        _sched(_latents(M=3))
    with pytest.raises(ValueError, match="leader_id=5 is out of range"):
        _sched(latents, leader_id=5)
    with pytest.raises(ValueError, match="does not hold latents.weight"):
        _sched(latents, optimizer=torch.optim.Adam([nn.Parameter(torch.zeros(5, 3))]))
    log_std = nn.Parameter(torch.zeros(5, 1))
    with pytest.raises(ValueError, match="does not hold log_std"):
        _sched(latents, optimizer=torch.optim.Adam([latents.weight]), log_std=log_std)
    with pytest.raises(ValueError, match="log_std must be"):
        _sched(latents, log_std=nn.Parameter(torch.zeros(4, 1)))
    with pytest.raises(ValueError, match="latent_dim=0"):
        _sched(PolicyLatents(5, 0))
    with pytest.raises(ValueError, match="generator or seed"):
        GeneticLatentScheduler(latents=latents, seed=0, generator=torch.Generator())
    sched = _sched(latents)
    with pytest.raises(ValueError, match=r"fitness must have shape \[M=5\]"):
        sched.step(0, torch.zeros(4))
    with pytest.raises(ValueError, match=r"fitness must have shape \[M=5\]"):
        sched.step(0, torch.zeros(5, 1))


def test_state_round_trip_continues_exactly():
    def make(latents):
        opt = torch.optim.Adam(latents.parameters(), lr=0.1)
        return _sched(latents, optimizer=opt, num_elites=2, mutation_std=0.3, seed=9,
                      warmup_frames=5, interval_frames=3), opt

    latents = _latents(M=6, D=4)
    a, opt_a = make(latents)
    pid = torch.arange(6).unsqueeze(-1).expand(6, 2).clone()
    done = torch.ones(6, 2, dtype=torch.bool)
    vals = torch.arange(6.0).unsqueeze(-1).expand(6, 2) * torch.tensor([1.0, 2.0])
    a.observe(_batch(pid, done, vals, torch.ones(6, 2, dtype=torch.long)))
    assert a.step(4).reason == "warmup"
    assert a.step(6).triggered
    a.observe(_batch(pid, done, vals.flip(0), torch.ones(6, 2, dtype=torch.long)))
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    latents_b = copy.deepcopy(latents)
    b, _ = make(latents_b)
    b.load_state_dict(state)
    assert repr(b.last_report) == repr(a.last_report) and repr(b.metrics()) == repr(a.metrics())
    assert torch.equal(b.fitness(), a.fitness())
    for frames in (8, 9, 12, 20):
        ra, rb = a.step(frames), b.step(frames)
        assert repr(ra) == repr(rb)  # NaN-aware equality of the whole report
        for s in (a, b):
            s.observe(_batch(pid, done, vals * frames % 5, torch.ones(6, 2, dtype=torch.long)))
    assert a.num_steps == 4 and torch.equal(latents.weight, latents_b.weight)
    with pytest.raises(ValueError, match="num_elites"):
        _sched(_latents(M=6), num_elites=3).load_state_dict(state)


# ----------------------------------------------------------------------------- a real trainer run
N_ENVS, HORIZON, M, EPISODE = 16, 10, 4, 20
BLOCK_PENALTY = (5.0, 0.0, 1.0, 2.0)  # per-step cost of each policy's block: the master is worst


def _build_epo(tmp_path, seed=0, total_iterations=6, algo="ppo"):
    torch.manual_seed(seed)
    # reward -= 100 * penalty[block]: each policy's returns lie in its own band of width ~326
    penalty = torch.tensor(BLOCK_PENALTY).repeat_interleave(N_ENVS // M).unsqueeze(-1)
    env = TransformedEnv(make_env("pendulum", N_ENVS, seed=seed, max_episode_steps=EPISODE),
                         RewardScaling(loc=-100.0 * penalty, scale=1.0))
    ac = make_actor_critic(3, 1, num_policies=M, latent_dim=4, hidden_sizes=(16,))
    collector = PopulationCollector(env, ac.actor, num_policies=M, frames_per_batch=N_ENVS * HORIZON)
    if algo == "ppo":
        loss = ClipPPOLoss(ac.actor, ac.critic)
    else:  # EPO proper: SAPG's leader aggregation + the genetic scheduler
        loss = SAPGLoss(ac.actor, ac.critic, num_policies=M, leader_id=0, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(loss.parameters(), lr=1e-3)
    trainer = OnPolicyTrainer(
        collector=collector, loss_module=loss, optimizer=optimizer,
        total_frames=N_ENVS * HORIZON * total_iterations, num_epochs=1, num_minibatches=2,
        value_estimator=GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic), reward_scale=1e-3,
        log_interval=1, progress_bar=False, seed=seed, checkpoint_path=str(tmp_path / "last.pt"),
    )
    if algo == "sapg":
        # registered first: the scheduler then sees relabelled leader rows, and must ignore them
        trainer.register_op("batch_process", loss.aggregate)
    epo = GeneticLatentScheduler(latents=ac.latents, optimizer=optimizer, log_std=ac.actor.log_std,
                                 mutation_std=0.1, warmup_frames=2 * N_ENVS * HORIZON, seed=seed)
    return trainer, epo, ac, collector


@pytest.mark.parametrize("algo", ["ppo", "sapg"])
def test_register_with_a_real_trainer(tmp_path, algo):
    trainer, epo, ac, collector = _build_epo(tmp_path, algo=algo)
    seen = []  # (collector's own per-policy stats, peeked) at each post_steps, before the scheduler
    trainer.register_op("post_steps", lambda: seen.append(collector.episode_stats(reset=False)))
    epo.register(trainer)
    reports = []
    trainer.register_op("post_steps", lambda: reports.append(epo.last_report))
    master0 = ac.latents.weight.detach()[0].clone()
    trainer.train()

    reasons = [r.reason for r in reports]
    # episodes of 20 steps, horizon 10: fitness exists every second iteration; warm-up = 1 iteration
    assert reasons == ["warmup", "spread", "missing_fitness", "spread", "missing_fitness", "spread"]
    for r in reports:
        if r.triggered:
            # ranked on the followers only: the master (worst by construction) is never replaced
            assert r.elites == [1, 2] and r.replaced == [3] and sorted(r.parents[0]) == [1, 2]
            for i, f in enumerate(r.fitness):  # each policy's fitness comes from its own block
                low = -EPISODE * (100 * BLOCK_PENALTY[i] + 16.3)
                assert low < f <= -EPISODE * 100 * BLOCK_PENALTY[i], (i, f)
    # the first window (before any step) is exactly what the collector saw in those envs
    first = reports[1]
    assert first.fitness == pytest.approx(seen[1]["return"].tolist(), rel=1e-6)
    # the logger still got every episode (the scheduler never reads or resets the collector)
    for i in range(M):
        assert sum(h[f"policy/{i}/count"] for h in trainer.history) == N_ENVS // M * 60 // EPISODE
    assert not torch.equal(ac.latents.weight.detach()[0], master0)  # the master trains normally
    assert trainer._log_dict["epo/num_genetic_steps"][-1] == 3.0  # metrics reach TorchRL's log path

    # checkpointed with the trainer, and restored by a resume
    saved = load_checkpoint(str(tmp_path / "last.pt"))["trainer"]["genetic_scheduler"]
    assert saved["num_steps"] == 3 and saved["last_step_frames"] == 6 * N_ENVS * HORIZON
    assert torch.equal(saved["generator"], epo.generator.get_state())
    assert GeneticStepReport.from_dict(saved["last_report"]) == epo.last_report
    trainer2, epo2, ac2, _ = _build_epo(tmp_path / "other", seed=1, algo=algo)
    epo2.register(trainer2)
    trainer2.load(str(tmp_path / "last.pt"))
    for key, value in epo.state_dict().items():
        other = epo2.state_dict()[key]
        assert torch.equal(value, other) if torch.is_tensor(value) else value == other, key
    assert torch.equal(ac2.latents.weight, ac.latents.weight)
