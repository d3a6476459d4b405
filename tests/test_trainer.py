"""OnPolicyTrainer: LR schedules, batch arithmetic, a short real run, NaN guard, checkpoints, resume."""
from __future__ import annotations

import copy
import csv
import math
import os
from types import SimpleNamespace

import pytest
import torch
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE
from torchrl.record.loggers import CSVLogger
from torchrl.trainers import TrainerHookBase

from torchrl_sapg import LearningRateSchedule, OnPolicyTrainer, PopulationCollector, make_actor_critic, make_env
from torchrl_sapg.trainers import load_checkpoint, save_checkpoint

N_ENVS, HORIZON, M = 16, 8, 2
FPB = N_ENVS * HORIZON  # frames per batch (= per iteration)
EPS = 1e-4  # RunningMeanStd's prior pseudo-count


# ----------------------------------------------------------------------------- helpers
class CountingHook(TrainerHookBase):
    """A minimal TorchRL trainer hook: counts its calls and checkpoints the count."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state_dict):
        self.calls = state_dict["calls"]

    def register(self, trainer, name="counter"):
        trainer.register_module(name, self)
        trainer.register_op("post_steps", self)


def build(
    *,
    total_frames: int,
    seed: int = 0,
    lr: float = 1e-3,
    lr_mode: str = "adaptive",
    num_minibatches: int | None = 4,
    minibatch_size: int | None = None,
    hidden=(16,),
    env_kwargs=None,
    **trainer_kwargs,
):
    """A small but complete SAPG-style PPO setup on the embedded Pendulum (M=2 latents)."""
    torch.manual_seed(seed)
    env = make_env("pendulum", N_ENVS, seed=seed, **(env_kwargs or {}))
    ac = make_actor_critic(3, 1, num_policies=M, latent_dim=4, hidden_sizes=hidden)
    collector = PopulationCollector(env, ac.actor, num_policies=M, frames_per_batch=FPB)
    loss = ClipPPOLoss(ac.actor, ac.critic)
    gae = GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic)
    optimizer = torch.optim.Adam(loss.parameters(), lr=lr)
    schedule = LearningRateSchedule(optimizer, mode=lr_mode, total_frames=total_frames)
    trainer_kwargs.setdefault("obs_normalizers", [ac.obs_normalizer])
    trainer = OnPolicyTrainer(
        collector=collector,
        loss_module=loss,
        optimizer=optimizer,
        total_frames=total_frames,
        num_epochs=2,
        num_minibatches=num_minibatches,
        minibatch_size=minibatch_size,
        value_estimator=gae,
        lr_schedule=schedule,
        progress_bar=False,
        seed=seed,
        **trainer_kwargs,
    )
    return SimpleNamespace(trainer=trainer, ac=ac, collector=collector, loss=loss, optimizer=optimizer, schedule=schedule)


def _assert_same(a, b, path="state"):
    """Bit-for-bit equality of nested state (tensors with torch.equal; NaN == NaN)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.shape == b.shape and a.dtype == b.dtype, path
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())), path
    elif isinstance(a, dict):
        assert set(a.keys()) == set(b.keys()), (path, set(a.keys()) ^ set(b.keys()))
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert a == b, (path, a, b)


def _params(setup):
    return {k: v.detach().clone() for k, v in setup.loss.state_dict().items()}


# ----------------------------------------------------------------------------- LR schedules
def _sgd_two_groups(lr0=(1e-3, 5e-4)):
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": lr0[0]}, {"params": [b], "lr": lr0[1]}])
    return opt, (a, b)


def test_adaptive_lr_matches_hand_rule_with_bounds():
    """rl_games / rsl_rl rule: lr /= f if KL > 2 thr, lr *= f if KL < thr / 2, within [min, max]."""
    thr, factor, min_lr, max_lr = 0.25, 2.0, 2.5e-4, 4e-3  # 2 thr = 0.5, thr / 2 = 0.125: exact floats
    opt, (a, b) = _sgd_two_groups()
    sched = LearningRateSchedule(opt, mode="adaptive", kl_threshold=thr, factor=factor, min_lr=min_lr, max_lr=max_lr)
    kls = [1.0, 0.3, 0.6, 0.9, 0.9, 0.01, 0.0, 0.1, 0.05, 0.05, 0.05, 0.5, 0.5001, 0.125, 0.1249]
    hand = [1e-3, 5e-4]
    trajectory = []
    for kl in kls:
        for g in range(2):
            if kl > 2 * thr:
                hand[g] = max(hand[g] / factor, min_lr)
            elif kl < thr / 2:
                hand[g] = min(hand[g] * factor, max_lr)
        before_a = float(a.detach())
        a.grad = torch.ones(1)
        opt.step()  # the optimiser really uses the (tensor) learning rate it holds
        assert float(a.detach()) == pytest.approx(before_a - float(opt.param_groups[0]["lr"]), rel=1e-6)
        sched.on_minibatch(torch.tensor(kl))
        assert float(opt.param_groups[0]["lr"]) == pytest.approx(hand[0], rel=1e-6), kl
        assert float(opt.param_groups[1]["lr"]) == pytest.approx(hand[1], rel=1e-6), kl
        trajectory.append(hand[0])
    # the walk sits on both bounds and on both band edges, each edge where a non-strict inequality would
    # move the rate (KL = 2 thr at 4e-3, KL = thr / 2 at 2e-3, below max_lr)
    assert trajectory[:5] == pytest.approx([5e-4, 5e-4, 2.5e-4, 2.5e-4, 2.5e-4])
    assert trajectory[5:] == pytest.approx([5e-4, 1e-3, 2e-3, 4e-3, 4e-3, 4e-3, 4e-3, 2e-3, 2e-3, 4e-3])
    assert float(sched.lr) == pytest.approx(hand[0])


def test_adaptive_lr_visits_both_bounds():
    opt, _ = _sgd_two_groups()
    sched = LearningRateSchedule(opt, mode="adaptive", kl_threshold=0.1, factor=1.5, min_lr=1e-4, max_lr=2e-3)
    seen = []
    for kl in [1.0] * 10:
        sched.on_minibatch(torch.tensor(kl))
        seen.append(float(sched.lr))
    assert seen[0] == pytest.approx(1e-3 / 1.5)
    assert seen[-1] == pytest.approx(1e-4) and min(seen) == pytest.approx(1e-4)
    for kl in [0.0] * 20:
        sched.on_minibatch(torch.tensor(kl))
        seen.append(float(sched.lr))
    assert seen[-1] == pytest.approx(2e-3) and max(seen) == pytest.approx(2e-3)


def test_adaptive_lr_needs_a_kl():
    opt, _ = _sgd_two_groups()
    sched = LearningRateSchedule(opt, mode="adaptive")
    with pytest.raises(KeyError, match="KL"):
        sched.on_minibatch(None)


def test_linear_lr_schedule():
    opt, _ = _sgd_two_groups((1e-3, 4e-4))
    sched = LearningRateSchedule(opt, mode="linear", total_frames=1000)
    for frames in [0, 250, 500, 999, 1000, 1500]:
        sched.on_iteration(frames)
        scale = max(0.0, 1.0 - frames / 1000)
        assert float(opt.param_groups[0]["lr"]) == pytest.approx(1e-3 * scale, rel=1e-6, abs=1e-12)
        assert float(opt.param_groups[1]["lr"]) == pytest.approx(4e-4 * scale, rel=1e-6, abs=1e-12)
        sched.on_minibatch(torch.tensor(10.0))  # the KL is ignored by the linear schedule
        assert float(opt.param_groups[0]["lr"]) == pytest.approx(1e-3 * scale, rel=1e-6, abs=1e-12)


def test_fixed_lr_schedule():
    opt, _ = _sgd_two_groups()
    sched = LearningRateSchedule(opt, mode="fixed")
    sched.on_minibatch(torch.tensor(100.0))
    sched.on_minibatch(torch.tensor(0.0))
    sched.on_iteration(10**9)
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(1e-3)
    assert float(opt.param_groups[1]["lr"]) == pytest.approx(5e-4)


def test_lr_schedule_argument_errors():
    opt, _ = _sgd_two_groups()
    with pytest.raises(ValueError, match="mode"):
        LearningRateSchedule(opt, mode="cosine")
    with pytest.raises(ValueError, match="total_frames"):
        LearningRateSchedule(opt, mode="linear")
    with pytest.raises(ValueError, match="factor"):
        LearningRateSchedule(opt, mode="adaptive", factor=1.0)


def test_linear_schedule_inside_training_reaches_zero():
    s = build(total_frames=3 * FPB, lr_mode="linear")
    s.trainer.train()
    lrs = [h["train/lr"] for h in s.trainer.history]
    expected = [1e-3 * (1 - (i + 1) * FPB / (3 * FPB)) for i in range(3)]
    assert lrs == pytest.approx(expected, abs=1e-9)
    assert lrs[-1] == 0.0


# ----------------------------------------------------------------------------- batch arithmetic
def test_exactly_one_of_num_minibatches_or_minibatch_size():
    with pytest.raises(ValueError, match="exactly one"):
        build(total_frames=FPB, num_minibatches=4, minibatch_size=32)
    with pytest.raises(ValueError, match="exactly one"):
        build(total_frames=FPB, num_minibatches=None, minibatch_size=None)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_minibatches": 3}, "num_minibatches=3"),
    ({"num_minibatches": None, "minibatch_size": 48}, "minibatch_size=48"),
])
def test_uneven_split_raises(kwargs, match):
    s = build(total_frames=FPB, **kwargs)
    with pytest.raises(ValueError, match=match) as err:
        s.trainer.train()
    assert str(FPB) in str(err.value)  # names the batch's row count


def test_minibatch_layout_and_optimizer_step_count():
    s = build(total_frames=2 * FPB, num_minibatches=None, minibatch_size=32)
    assert s.trainer.minibatch_layout(FPB) == (FPB // 32, 32)
    s.trainer.train()
    assert s.trainer.batch_layout == {
        "rows": FPB, "num_minibatches": FPB // 32, "minibatch_size": 32,
        "optimizer_steps_per_iteration": 2 * FPB // 32,
    }
    assert s.trainer._optim_count == 2 * 2 * (FPB // 32)  # iterations * epochs * minibatches
    s2 = build(total_frames=FPB, num_minibatches=8)
    assert s2.trainer.minibatch_layout(FPB) == (8, FPB // 8)


def test_invalid_counts():
    s = build(total_frames=FPB)
    common = dict(collector=s.collector, loss_module=s.loss, optimizer=s.optimizer)
    with pytest.raises(ValueError, match="num_epochs"):
        OnPolicyTrainer(**common, total_frames=FPB, num_epochs=0, num_minibatches=4)
    with pytest.raises(ValueError, match="num_minibatches"):
        OnPolicyTrainer(**common, total_frames=FPB, num_epochs=1, num_minibatches=0)
    with pytest.raises(ValueError, match="total_frames"):
        OnPolicyTrainer(**common, total_frames=0, num_epochs=1, num_minibatches=4)


# ----------------------------------------------------------------------------- a short real run
def test_short_training_run_counts_frames_updates_params_and_normalizer():
    iterations = 3
    # 300 is not a multiple of the batch: training runs whole batches, stopping at the first >= 300
    s = build(total_frames=300)
    seen_obs, count_before, count_after, ratio_gap = [], [], [], []
    norm = s.ac.obs_normalizer

    def on_batch(batch):
        seen_obs.append(batch["observation"].clone())
        count_before.append(float(norm.stats.count))
        # the normaliser and weights are those the batch was collected with: the first PPO
        # ratio of every iteration is exactly 1
        with torch.no_grad():
            re = s.ac.actor.get_dist(batch.clone()).log_prob(batch["action"])
        ratio_gap.append(float((re - batch["action_log_prob"]).abs().max()))
        return batch

    s.trainer.register_op("batch_process", on_batch)
    s.trainer.register_op("post_steps", lambda: count_after.append(float(norm.stats.count)))
    before = _params(s)
    s.trainer.train()

    assert s.trainer.collected_frames == iterations * FPB
    assert s.trainer.iteration == iterations
    assert [h["train/frames"] for h in s.trainer.history] == [float(FPB * (i + 1)) for i in range(iterations)]
    assert [h["train/iteration"] for h in s.trainer.history] == [1.0, 2.0, 3.0]
    assert s.trainer._optim_count == iterations * 2 * 4

    after = _params(s)
    for key in ("actor_network_params.module.0.module.log_std",
                "actor_network_params.module.0.module.backbone.latents.weight",
                "actor_network_params.module.0.module.backbone.mlp.0.weight",
                "critic_network_params.module.mlp.0.weight"):
        assert not torch.equal(before[key], after[key]), f"{key} did not change"
    # the collector's policy is the trained actor (no stale copy)
    assert torch.equal(s.collector.policy.log_std.detach(), after["actor_network_params.module.0.module.log_std"])

    # normaliser: updated once per batch, after the update, with exactly the collected obs
    assert count_before == pytest.approx([EPS + i * FPB for i in range(iterations)], rel=1e-6)
    assert count_after == pytest.approx([EPS + (i + 1) * FPB for i in range(iterations)], rel=1e-6)
    obs = torch.cat([o.reshape(-1, 3) for o in seen_obs]).double()
    n = obs.shape[0]
    mean = obs.sum(0) / (n + EPS)
    var = (((obs - mean) ** 2).sum(0) + EPS * (1 + mean**2)) / (n + EPS)
    assert torch.allclose(norm.stats.mean.double(), mean, rtol=1e-5, atol=1e-5)
    assert torch.allclose(norm.stats.var.double(), var, rtol=1e-4, atol=1e-5)
    assert max(ratio_gap) < 1e-5

    # logged keys
    last = s.trainer.history[-1]
    for key in ("train/loss_objective", "train/loss_critic", "train/kl_approx", "train/grad_norm", "train/lr",
                "train/fps", "policy/0/return", "policy/1/return", "policy/0/length", "policy/1/count",
                "episode/return", "episode/count"):
        assert key in last, key


def test_headline_policy_selects_episode_metrics():
    s = build(total_frames=2 * FPB, headline_policy=1, env_kwargs={"max_episode_steps": 5})
    s.trainer.train()
    for h in s.trainer.history:
        assert h["policy/1/count"] > 0
        assert h["episode/return"] == h["policy/1/return"]
        assert h["episode/length"] == h["policy/1/length"] == 5.0
        assert h["episode/return"] != h["policy/0/return"]


def test_reward_scale_applies_to_value_estimation_not_to_logged_returns():
    # every env's episode is exactly one batch row
    s = build(total_frames=FPB, reward_scale=0.5, env_kwargs={"max_episode_steps": HORIZON})
    seen = {}

    def on_batch(batch):
        seen["reward_sum"] = batch["next", "reward"].sum(1).squeeze(-1).clone()
        seen["episode_reward"] = batch["next", "episode_reward"][:, -1].squeeze(-1).clone()
        return batch

    s.trainer.register_op("batch_process", on_batch)
    s.trainer.train()
    assert torch.allclose(seen["reward_sum"], 0.5 * seen["episode_reward"], rtol=1e-5)
    h = s.trainer.history[-1]
    raw = seen["episode_reward"].view(M, -1).mean(1)
    assert h["policy/0/return"] == pytest.approx(float(raw[0]), rel=1e-5)
    assert h["policy/1/return"] == pytest.approx(float(raw[1]), rel=1e-5)


@pytest.mark.parametrize("log_interval", [1, 3])
def test_nan_loss_raises_and_writes_no_checkpoint(tmp_path, log_interval):
    ckpt = tmp_path / "ckpt.pt"
    s = build(total_frames=4 * FPB, checkpoint_path=str(ckpt), log_interval=log_interval)
    calls = []

    def poison(batch):
        calls.append(1)
        batch["advantage"] = torch.full_like(batch["advantage"], float("nan"))
        return batch

    s.trainer.register_op("batch_process", poison)
    with pytest.raises(FloatingPointError, match="non-finite"):
        s.trainer.train()
    assert len(calls) == 1  # raised in the first iteration, not at the next log line
    assert not ckpt.exists()
    assert os.listdir(tmp_path) == []


def test_checkpoint_interval_writes_during_training(tmp_path):
    ckpt = tmp_path / "last.pt"
    s = build(total_frames=4 * FPB, checkpoint_path=str(ckpt), checkpoint_interval=2 * FPB)
    on_disk = []
    s.trainer.register_op("post_steps", lambda: on_disk.append(load_checkpoint(ckpt)["frames"] if ckpt.exists() else None))
    s.trainer.train()
    # post_steps runs before the iteration's save: saves happened after iterations 2 and 4
    assert on_disk == [None, None, 2 * FPB, 2 * FPB]
    assert load_checkpoint(ckpt)["frames"] == 4 * FPB


# ----------------------------------------------------------------------------- checkpoint files
def test_save_checkpoint_is_atomic(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"frames": 10, "w": torch.arange(3)}, path)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]  # no temp file left behind
    # a write that fails half-way (unpicklable) leaves the previous checkpoint intact
    with pytest.raises(Exception):
        save_checkpoint({"frames": 20, "bad": lambda: None}, path)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]
    state = load_checkpoint(path)
    assert state["frames"] == 10 and torch.equal(state["w"], torch.arange(3))
    # a folder resolves to its last.pt
    save_checkpoint({"frames": 30}, tmp_path / "run" / "last.pt")
    assert load_checkpoint(tmp_path / "run")["frames"] == 30


def test_unreadable_checkpoints_raise_runtime_error_naming_the_file(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint({"frames": 1, "w": torch.randn(1000)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    for bad in (truncated, garbage):
        with pytest.raises(RuntimeError) as err:
            load_checkpoint(bad)
        assert str(bad) in str(err.value)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    s = build(total_frames=FPB)
    with pytest.raises(RuntimeError) as err:
        s.trainer.load(str(truncated))
    assert str(truncated) in str(err.value)
    with pytest.raises(RuntimeError, match="not a torchrl-sapg"):
        s.trainer.load(str(good))


def test_checkpoint_state_keys(tmp_path):
    s = build(total_frames=FPB, checkpoint_path=str(tmp_path / "last.pt"), checkpoint_extra=lambda: {"config": {"a": 1}})
    CountingHook().register(s.trainer)
    s.trainer.train()
    state = load_checkpoint(tmp_path / "last.pt")
    assert set(state) == {"format", "trainer", "frames", "iteration", "optim_count", "generator", "rng", "history", "extra",
                          "checksum"}
    assert state["format"] == "torchrl-sapg/1"
    assert state["extra"] == {"config": {"a": 1}}
    assert set(state["trainer"]) == {"collector", "loss_module", "state", "optimizer", "optimization_stepper",
                                     "lr_schedule", "counter"}
    assert state["trainer"]["counter"] == {"calls": 1}
    assert state["frames"] == FPB and state["iteration"] == 1
    assert set(state["rng"]) >= {"torch", "numpy", "python"}
    assert {"episode_sums", "episode_counts", "policy_state_dict"} <= set(state["trainer"]["collector"])


# ----------------------------------------------------------------------------- resume
def test_resume_continues_exactly_where_it_stopped(tmp_path):
    """Run A trains K iterations straight; run B trains k, checkpoints; a fresh run C loads and goes to K.

    What the design promises and this test asserts bit-for-bit:
    * B's first k iterations are identical to A's (same seeds), so B's checkpoint is A's state at k;
    * after ``load``: frames, iteration and optimiser-step counters, model + latents + log-std,
      normaliser statistics, Adam moments, the (adapted) learning rate, the minibatch generator,
      the global RNG states, registered TorchRL hooks and the metric history are B's;
    * after training to K: C's frame/iteration/optimiser-step counts equal A's, the logged
      history (``trainer.history`` and the CSV files) continues with no reset or duplicate, and
      the random streams (minibatch permutations, action noise) are consumed exactly as in A.

    What is *not* restored: the simulator. The envs restart their episodes after a resume (a
    fresh env is reset by the new collector, its own reset-noise generator starts from its
    seed), so C's later batches differ from A's and the final weights are not bit-identical to
    the straight run's.
    """
    K, k = 4, 2
    ckpt = tmp_path / "ckpt" / "last.pt"

    def first_step_counts(setup):
        out = []
        setup.trainer.register_op("batch_process", lambda b: out.append(b["step_count"][:, 0].clone()) or b)
        return out

    # ---- A: straight to K, snapshot at k
    a = build(total_frames=K * FPB)
    hook_a = CountingHook()
    hook_a.register(a.trainer)
    snap = {}
    a.trainer.register_op(
        "post_steps",
        lambda: snap.setdefault(len(snap), (_params(a), a.trainer.generator.get_state().clone())),
    )
    a_steps = first_step_counts(a)
    a.trainer.train()
    a_rng_end = torch.get_rng_state().clone()
    a_gen_end = a.trainer.generator.get_state().clone()
    a_params_end = _params(a)

    # ---- B: k iterations, checkpoint at the end, logging to CSV
    b = build(total_frames=k * FPB, checkpoint_path=str(ckpt), logger=CSVLogger("run", log_dir=str(tmp_path / "logs")))
    hook_b = CountingHook()
    hook_b.register(b.trainer)
    b.trainer.train()
    assert b.trainer.collected_frames == k * FPB and hook_b.calls == k
    saved = load_checkpoint(ckpt)
    assert saved["trainer"]["counter"] == {"calls": k}
    # B up to k is A up to k, bit for bit
    _assert_same(_params(b), snap[k - 1][0])
    assert torch.equal(b.trainer.generator.get_state(), snap[k - 1][1])
    b_state = {
        "params": _params(b),
        "optim": copy.deepcopy(b.optimizer.state_dict()),
        "lr": float(b.schedule.lr),
        "norm": {kk: v.clone() for kk, v in b.ac.obs_normalizer.state_dict().items()},
        "gen": b.trainer.generator.get_state().clone(),
        "rng": torch.get_rng_state().clone(),
        "history": list(b.trainer.history),
        "optim_count": b.trainer._optim_count,
    }
    assert b_state["lr"] != pytest.approx(1e-3)  # the adaptive rule moved it: restoring it matters

    # ---- C: a fresh model/optimiser/collector/trainer loads B's checkpoint and goes on to K
    c = build(total_frames=K * FPB, checkpoint_path=str(ckpt), logger=CSVLogger("run", log_dir=str(tmp_path / "logs")))
    hook_c = CountingHook()
    hook_c.register(c.trainer)
    assert float(c.schedule.lr) == pytest.approx(1e-3)  # fresh optimiser before the load
    c.trainer.load(str(ckpt))
    assert c.trainer.collected_frames == k * FPB
    assert c.trainer.iteration == k
    assert c.trainer._optim_count == b_state["optim_count"]
    assert hook_c.calls == k
    _assert_same(_params(c), b_state["params"])
    _assert_same(c.optimizer.state_dict()["state"], b_state["optim"]["state"])
    assert float(c.schedule.lr) == b_state["lr"]
    assert float(c.optimizer.param_groups[0]["lr"]) == b_state["lr"]
    _assert_same(dict(c.ac.obs_normalizer.state_dict()), b_state["norm"])
    assert float(c.ac.obs_normalizer.stats.count) == pytest.approx(EPS + k * FPB, rel=1e-6)
    assert torch.equal(c.trainer.generator.get_state(), b_state["gen"])
    assert torch.equal(torch.get_rng_state(), b_state["rng"])
    _assert_same(c.trainer.history, b_state["history"])

    c_steps = first_step_counts(c)
    c.trainer.train()

    # counters and history continue
    assert c.trainer.collected_frames == a.trainer.collected_frames == K * FPB
    assert c.trainer.iteration == a.trainer.iteration == K
    assert c.trainer._optim_count == a.trainer._optim_count
    assert hook_c.calls == hook_a.calls == K
    assert load_checkpoint(ckpt)["trainer"]["counter"] == {"calls": K}
    assert [h["train/frames"] for h in c.trainer.history] == [float(FPB * (i + 1)) for i in range(K)]
    assert [h["train/iteration"] for h in c.trainer.history] == [float(i + 1) for i in range(K)]
    _assert_same(c.trainer.history[:k], b_state["history"])
    with open(tmp_path / "logs" / "run" / "scalars" / "train" / "frames.csv") as f:
        rows = [(int(r[0]), float(r[1])) for r in csv.reader(f)]
    assert rows == [(FPB * (i + 1), float(FPB * (i + 1))) for i in range(K)]
    assert float(c.ac.obs_normalizer.stats.count) == pytest.approx(EPS + K * FPB, rel=1e-6)
    # the adaptive lr kept adapting from the restored value
    assert float(c.schedule.lr) == pytest.approx(c.trainer.history[-1]["train/lr"])

    # random streams continue exactly: same minibatch permutations and action-noise draws as A
    assert torch.equal(c.trainer.generator.get_state(), a_gen_end)
    assert torch.equal(torch.get_rng_state(), a_rng_end)

    # ... but the envs restarted their episodes: A's batch k+1 starts mid-episode, C's at step 0
    assert (a_steps[k] == k * HORIZON).all()
    assert (c_steps[0] == 0).all()
    # so the data, and with it the final weights, differ from the straight run (not promised)
    assert not torch.equal(_params(c)["actor_network_params.module.0.module.log_std"],
                           a_params_end["actor_network_params.module.0.module.log_std"])


def test_resume_rejects_a_hook_or_schedule_the_checkpoint_lacks(tmp_path):
    ckpt = tmp_path / "last.pt"
    build(total_frames=FPB, checkpoint_path=str(ckpt)).trainer.train()
    # a hook the checkpoint does not hold
    other = build(total_frames=2 * FPB)
    CountingHook().register(other.trainer, name="extra_hook")
    with pytest.raises(RuntimeError, match="does not match"):
        other.trainer.load(str(ckpt))
    # another lr schedule
    with pytest.raises(RuntimeError, match="lr schedule mode"):
        build(total_frames=2 * FPB, lr_mode="fixed").trainer.load(str(ckpt))


def test_resume_into_another_network_gives_the_clear_error(tmp_path):
    ckpt = tmp_path / "last.pt"
    build(total_frames=FPB, checkpoint_path=str(ckpt)).trainer.train()
    with pytest.raises(RuntimeError, match="does not match"):
        build(total_frames=2 * FPB, hidden=(8,)).trainer.load(str(ckpt))


def test_training_past_total_frames_is_a_no_op(tmp_path):
    ckpt = tmp_path / "last.pt"
    s = build(total_frames=FPB, checkpoint_path=str(ckpt))
    s.trainer.train()
    again = build(total_frames=FPB)
    again.trainer.load(str(ckpt))
    before = _params(again)
    again.trainer.train()
    assert again.trainer.collected_frames == FPB
    _assert_same(_params(again), before)


# ----------------------------------------------------------------------------- analytic KL
def test_gaussian_kl_matches_torch_kl_divergence_and_skips_off_policy_rows():
    from tensordict import TensorDict
    from torch.distributions import Normal, kl_divergence
    from torchrl.envs import ExplorationType, set_exploration_type

    from torchrl_sapg.trainers.on_policy import gaussian_kl

    torch.manual_seed(0)
    ac = make_actor_critic(3, 2, num_policies=3, latent_dim=4, hidden_sizes=(8,))
    ids = torch.tensor([0, 1, 2, 0, 1, 2])
    td = TensorDict({"observation": torch.randn(6, 3), "policy_id": ids}, [6])
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        td = ac.actor(td)
    assert float(gaussian_kl(ac.actor, td)) == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        ac.actor.log_std.add_(torch.tensor([[0.1, -0.2], [0.3, 0.0], [0.0, 0.05]]))
        ac.latents.weight.add_(0.5)
        new = ac.actor(td.clone())
    per_row = kl_divergence(Normal(td["loc"], td["scale"]), Normal(new["loc"], new["scale"])).sum(-1)
    assert float(gaussian_kl(ac.actor, td)) == pytest.approx(float(per_row.mean()), rel=1e-5)
    td["off_policy"] = torch.tensor([False, True, True, False, False, True])
    keep = ~td["off_policy"]
    assert float(gaussian_kl(ac.actor, td)) == pytest.approx(float(per_row[keep].mean()), rel=1e-5)


def test_gaussian_kl_max_policy_is_the_largest_per_policy_mean():
    """reduction="max_policy": per-policy mean KL over on-policy rows (by hand), then the max;
    the rows of a single policy give their mean; bad arguments name the fix."""
    from tensordict import TensorDict
    from torch.distributions import Normal, kl_divergence
    from torchrl.envs import ExplorationType, set_exploration_type

    from torchrl_sapg.trainers.on_policy import ClippedGradientStepper, gaussian_kl

    torch.manual_seed(1)
    ac = make_actor_critic(3, 2, num_policies=4, latent_dim=4, hidden_sizes=(8,))
    ids = torch.tensor([0, 1, 2, 0, 1, 2, 0, 2, 1, 0])  # policy 3 has no rows
    td = TensorDict({"observation": torch.randn(10, 3), "policy_id": ids}, [10])
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        td = ac.actor(td)
        ac.actor.log_std.add_(torch.tensor([[0.05, 0.0], [0.6, -0.3], [0.1, 0.1], [2.0, 2.0]]))
        new = ac.actor(td.clone())
    per_row = kl_divergence(Normal(td["loc"], td["scale"]), Normal(new["loc"], new["scale"])).sum(-1)
    td["off_policy"] = torch.tensor([False, True, False, False, False, True, False, False, False, True])
    keep = ~td["off_policy"]
    by_hand = max(float(per_row[keep & (ids == j)].mean()) for j in range(3))
    got = gaussian_kl(ac.actor, td, reduction="max_policy", num_policies=4)
    assert float(got) == pytest.approx(by_hand, rel=1e-5)
    assert float(got) > float(gaussian_kl(ac.actor, td)) * 1.2  # the mean hides the policy that moved most
    single = td[ids == 1]  # only one policy's rows: the max over policies is their mean
    assert float(gaussian_kl(ac.actor, single, reduction="max_policy", num_policies=4)) == pytest.approx(
        float(gaussian_kl(ac.actor, single)), rel=1e-6
    )
    with pytest.raises(ValueError, match="num_policies"):
        gaussian_kl(ac.actor, td, reduction="max_policy")
    with pytest.raises(ValueError, match="reduction"):
        gaussian_kl(ac.actor, td, reduction="median")
    with pytest.raises(ValueError, match="kl_reduction"):
        ClippedGradientStepper(kl_reduction="leader")


def _small_ppo(lr: float):
    """A tiny seeded PPO setup: actor-critic, collector, ClipPPOLoss and Adam."""
    torch.manual_seed(0)
    env = make_env("pendulum", N_ENVS, seed=0)
    ac = make_actor_critic(3, 1, num_policies=M, latent_dim=4, hidden_sizes=(16,))
    collector = PopulationCollector(env, ac.actor, num_policies=M, frames_per_batch=FPB)
    loss = ClipPPOLoss(ac.actor, ac.critic)
    return ac, collector, loss, torch.optim.Adam(loss.parameters(), lr=lr)


def test_kl_actor_drives_the_adaptive_lr_with_the_analytic_kl():
    """Replay the adaptive rule by hand on the analytic KL of every minibatch (before its step)."""
    from torchrl_sapg.trainers.on_policy import gaussian_kl

    thr = 0.016
    ac, collector, loss, optimizer = _small_ppo(lr=3e-3)
    schedule = LearningRateSchedule(optimizer, mode="adaptive", kl_threshold=thr)
    trainer = OnPolicyTrainer(
        collector=collector, loss_module=loss, optimizer=optimizer, total_frames=2 * FPB, num_epochs=2,
        num_minibatches=4, value_estimator=GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic),
        lr_schedule=schedule, kl_actor=ac.actor, obs_normalizers=[ac.obs_normalizer], progress_bar=False, seed=0,
    )
    kls, lrs = [], []

    def before_step(sub):
        kls.append(float(gaussian_kl(ac.actor, sub)))
        return sub

    trainer.register_op("process_optim_batch", before_step)
    trainer.register_op("post_optim", lambda: lrs.append(float(schedule.lr)))
    trainer.train()
    assert len(kls) == len(lrs) == 2 * 2 * 4
    lr, expected = 3e-3, []
    for kl in kls:
        if kl > 2 * thr:
            lr = max(lr / 1.5, 1e-6)
        elif kl < thr / 2:
            lr = min(lr * 1.5, 1e-2)
        expected.append(lr)
    assert lrs == pytest.approx(expected, rel=1e-5)
    assert len(set(round(x, 9) for x in lrs)) > 1  # the rule did act
    assert "train/kl" in trainer.history[-1]


def test_a_fixed_schedule_skips_the_analytic_kl_pass():
    """Only the adaptive rule reads the KL: with a fixed schedule the extra actor pass is skipped."""
    ac, collector, loss, optimizer = _small_ppo(lr=3e-4)
    trainer = OnPolicyTrainer(
        collector=collector, loss_module=loss, optimizer=optimizer, total_frames=FPB, num_epochs=1,
        num_minibatches=2, value_estimator=GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic),
        lr_schedule=LearningRateSchedule(optimizer, mode="fixed"), kl_actor=ac.actor, progress_bar=False, seed=0,
    )
    trainer.train()
    assert "train/kl" not in trainer.history[-1] and "train/kl_approx" in trainer.history[-1]


# ----------------------------------------------------------------------------- TorchRL log hooks
def test_torchrl_log_hooks_reach_the_logger_at_frame_steps(tmp_path):
    from torchrl.trainers import LogScalar

    # episodes of exactly one batch row: the fraction of done steps is 1 / HORIZON
    s = build(total_frames=2 * FPB, env_kwargs={"max_episode_steps": HORIZON},
              logger=CSVLogger("run", log_dir=str(tmp_path)))
    hook = LogScalar(("next", "done"), "done_fraction", include_std=False)
    s.trainer.register_op("pre_steps_log", hook)
    s.trainer.train()
    rows = [(int(r[0]), float(r[1])) for r in csv.reader(open(tmp_path / "run" / "scalars" / "done_fraction.csv"))]
    assert rows == [(FPB, 1 / HORIZON), (2 * FPB, 1 / HORIZON)]


def test_post_optim_complete_log_stage_runs_once_per_iteration():
    s = build(total_frames=2 * FPB)
    calls = []

    def complete(optim_steps, average_losses):
        calls.append((optim_steps, float(average_losses["loss_objective"])))

    s.trainer.register_op("post_optim_complete_log", complete)
    s.trainer.train()
    assert [c[0] for c in calls] == [8, 16]  # cumulative optimiser steps after each batch


def test_setup_and_shutdown_stages_run_once_per_train_call():
    s = build(total_frames=2 * FPB)
    calls = []
    s.trainer.register_op("setup", lambda: calls.append("setup"))
    s.trainer.register_op("shutdown", lambda: calls.append("shutdown"))
    s.trainer.register_op("post_steps", lambda: calls.append("step"))
    s.trainer.train()
    assert calls == ["setup", "step", "step", "shutdown"]


def test_shutdown_stage_runs_even_when_there_is_nothing_left_to_train(tmp_path):
    ckpt = tmp_path / "last.pt"
    build(total_frames=FPB, checkpoint_path=str(ckpt)).trainer.train()
    again = build(total_frames=FPB)
    again.trainer.load(str(ckpt))
    calls = []
    again.trainer.register_op("setup", lambda: calls.append("setup"))
    again.trainer.register_op("shutdown", lambda: calls.append("shutdown"))
    again.trainer.train()
    assert calls == ["setup", "shutdown"]


@pytest.mark.parametrize("reduction", ["mean", "max_policy"])
def test_the_loss_reports_the_analytic_kl_from_its_own_forward(reduction):
    """The KL the adaptive rate reads comes from the loss's forward (no second actor pass) and equals gaussian_kl's."""
    from tensordict import TensorDict

    from torchrl_sapg.objectives import SAPGLoss
    from torchrl_sapg.trainers.on_policy import gaussian_kl

    torch.manual_seed(0)
    ac = make_actor_critic(3, 1, num_policies=M, latent_dim=4, hidden_sizes=(16,))
    td = ac.actor(TensorDict({"observation": torch.randn(32, 3), "policy_id": torch.arange(32) % M}, [32])).detach()
    td.update({"advantage": torch.randn(32, 1), "value_target": torch.randn(32, 1),
               "off_policy": torch.arange(32) % 5 == 0, "target_log_prob": td["action_log_prob"]})
    with torch.no_grad():
        ac.actor.log_std.add_(torch.tensor([[0.3], [-0.2]]))  # the policies moved since collection
    loss = SAPGLoss(ac.actor, ac.critic, num_policies=M)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-3)
    collector = PopulationCollector(make_env("pendulum", 4, seed=0), ac.actor, num_policies=M, frames_per_batch=8)
    trainer = OnPolicyTrainer(collector=collector, loss_module=loss, optimizer=optim, total_frames=8, num_epochs=1,
                              num_minibatches=1, lr_schedule=LearningRateSchedule(optim, mode="adaptive"),
                              kl_actor=ac.actor, kl_reduction=reduction, progress_bar=False)
    assert loss.analytic_kl == reduction  # configured by the trainer
    ref = gaussian_kl(ac.actor, td, reduction=reduction, num_policies=M)  # the extra pass, before the step
    passes, get_dist = [], loss.actor_network.get_dist

    def counting_get_dist(*args, **kwargs):
        passes.append(1)
        return get_dist(*args, **kwargs)

    loss.actor_network.get_dist = counting_get_dist  # instrumentation only: counts actor passes
    out = trainer.optimization_stepper.step(trainer, td.clone())
    del loss.actor_network.get_dist
    assert len(passes) == 1  # the loss's own pass; none for the KL
    assert float(out["kl"]) > 0
    torch.testing.assert_close(out["kl"], ref)


def _adam_pair(lr):
    """The same parameters and Adam state twice: one optimiser fused, one not."""
    torch.manual_seed(0)
    base = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    pairs = []
    for fused in (False, True):
        params = [torch.nn.Parameter(p.detach().clone()) for p in base]
        pairs.append((params, torch.optim.Adam(params, lr=lr, fused=fused or None)))
    return pairs


@pytest.mark.parametrize("lr", [1e-2, torch.tensor(1e-2)], ids=["float_lr", "tensor_lr"])
def test_skip_if_nonfinite_with_fused_adam_skips_the_whole_step_and_steps_like_adam_otherwise(lr):
    from torchrl_sapg.trainers.stepper import skip_if_nonfinite

    (plain, plain_opt), (fused, fused_opt) = _adam_pair(lr)
    for step in range(3):
        grads = [torch.randn_like(p) for p in plain]
        finite = torch.tensor(step != 1)  # the 2nd step carries a NaN loss
        if step == 1:
            grads[0][0, 0] = float("nan")
        before = [p.detach().clone() for p in fused]
        state_before = copy.deepcopy(fused_opt.state_dict()["state"])
        for params, opt in ((plain, plain_opt), (fused, fused_opt)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            with skip_if_nonfinite(opt, params, finite):
                opt.step()
        assert not hasattr(fused_opt, "found_inf")  # the flag is only set around the step
        assert all(torch.isfinite(p).all() for p in plain + fused)
        if step == 0:  # a finite step: the fused kernel is Adam's update
            for a, b in zip(plain, fused):
                torch.testing.assert_close(a, b)
        if step == 1:  # skipped: fused leaves weights, moments and step count untouched; plain keeps the weights
            assert all(torch.equal(a, b) for a, b in zip(before, fused))
            assert all(torch.equal(a, b) for a, b in zip(before, plain))
            for k, s in fused_opt.state_dict()["state"].items():
                assert all(torch.equal(s[n], state_before[k][n]) for n in ("step", "exp_avg", "exp_avg_sq"))
    assert fused_opt.state_dict()["state"][0]["step"].item() == 2  # the skipped step is not counted
    assert plain_opt.state_dict()["state"][0]["step"].item() == 3  # the plain path steps with a zero lr


def test_fused_adam_step_matches_adams_formula_by_hand():
    from torchrl_sapg.trainers.stepper import skip_if_nonfinite

    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    opt = torch.optim.Adam([p], lr=0.1, betas=(0.9, 0.999), eps=1e-8, fused=True)
    w, m, v = p.detach().clone(), torch.zeros(5), torch.zeros(5)
    for t in (1, 2):
        g = torch.randn(5)
        p.grad = g.clone()
        with skip_if_nonfinite(opt, [p], torch.tensor(True)):
            opt.step()
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        w = w - 0.1 * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
        torch.testing.assert_close(p.detach(), w)


def test_recipe_optimizer_is_fused_adam_unless_switched_off():
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "recipes"))
    from omegaconf import OmegaConf

    from common import build_optimizer

    loss = torch.nn.Linear(3, 2)
    for flag, fused in ((True, True), (False, None)):
        opt = build_optimizer(OmegaConf.create({"train": {"lr": 3e-4, "fused_adam": flag}}), loss)
        assert isinstance(opt, torch.optim.Adam) and opt.defaults["fused"] is fused and opt.defaults["lr"] == 3e-4
    assert build_optimizer(OmegaConf.create({"train": {"lr": 1e-3}}), loss).defaults["fused"] is True  # the default


def test_skip_if_nonfinite_hands_found_inf_only_to_torchs_own_fused_optimisers():
    from torchrl_sapg.trainers.stepper import skip_if_nonfinite

    class MyAdam(torch.optim.Adam):  # a subclass elsewhere may not honour found_inf: the zero-lr path
        pass

    for cls, steps in ((torch.optim.Adam, 0), (MyAdam, 1)):
        p = torch.nn.Parameter(torch.ones(3))
        p.grad = torch.full((3,), float("nan"))
        opt = cls([p], lr=0.1, fused=True)
        with skip_if_nonfinite(opt, [p], torch.tensor(False)):
            opt.step()
        assert torch.equal(p.detach(), torch.ones(3)) and opt.state[p]["step"].item() == steps
