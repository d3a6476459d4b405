"""Training-loop rules pinned by number: the cases the other tests left free (found by mutation testing).

Each test compares the library with a direct hand computation on a small seeded input. The trainer tests
run :class:`OnPolicyTrainer` on a toy loss (a quadratic in two parameters) fed by a scripted collector, so
every number the loop produces can be replayed in plain torch: the per-epoch shuffles and minibatch cuts,
the clipped SGD steps and their logged means, the adaptive rate's timing, fps (frames of every rank), log lines,
the dropped-row counter, NaN metrics, the checkpoint interval after a resume and what the normaliser sees.
Then the NaN screen's same-block refill, the skipped step, the schedules' defaults, band edges and resumed
lr0, evaluation's first-episode accounting, and the normaliser's default clip.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs import EnvBase

from torchrl_sapg.modules.normalization import ObservationNormalizer
from torchrl_sapg.trainers import LearningRateSchedule, OnPolicyTrainer
from torchrl_sapg.trainers.screening import screen_nonfinite
from torchrl_sapg.trainers.stepper import ClippedGradientStepper

N, T = 4, 3  # env rows and horizon of a scripted batch
FPB = N * T
EPS = 1e-4  # RunningMeanStd's prior pseudo-count
W0, B0 = (0.5, -1.0), (2.0,)


# ----------------------------------------------------------------------------- toy loop
class ToyLoss(nn.Module):
    """``loss_fit = mean_rows |w - x|^2``, ``loss_entropy = b^2 / 2``, and two non-loss outputs."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(W0))
        self.b = nn.Parameter(torch.tensor(B0))

    def forward(self, td):
        x = td["x"]
        return TensorDict({
            "loss_fit": ((self.w - x) ** 2).sum(-1).mean(),
            "loss_entropy": 0.5 * (self.b ** 2).sum(),
            "kl_approx": td["k"].mean(),
            "probe": x[:, 0].mean(),
        }, [])


class ToyCollector:
    """Yields the given ``[N, T]`` batches; two policy blocks; fixed episode statistics."""

    num_policies = 2

    def __init__(self, batches, stats=None):
        self.batches = list(batches)
        self.stats = stats or {"return": [1.0, float("nan")], "count": [3.0, 0.0]}

    def __iter__(self):
        return iter(self.batches)

    def episode_stats(self):
        return TensorDict({k: torch.tensor(v) for k, v in self.stats.items()}, [2])

    def state_dict(self):
        return {}

    def load_state_dict(self, state_dict):
        pass


def toy_batch(seed=0, n=N, t=T):
    """Seeded ``[n, t]`` data: fit targets ``x``, a per-row KL ``k``, observations and rewards."""
    g = torch.Generator().manual_seed(seed)
    return TensorDict({
        "x": torch.randn(n, t, 2, generator=g),
        "k": torch.rand(n, t, generator=g) * 0.05,
        "observation": torch.randn(n, t, 3, generator=g),
        "next": {"observation": torch.randn(n, t, 3, generator=g), "reward": torch.randn(n, t, 1, generator=g)},
    }, [n, t])


def toy_trainer(batches, *, lr=0.1, seed=3, num_epochs=2, num_minibatches=3, max_grad_norm=0.5, schedule=None,
                collector=None, **kwargs):
    loss = ToyLoss()
    opt = torch.optim.SGD(loss.parameters(), lr=lr)
    sched = schedule(opt) if schedule is not None else None
    trainer = OnPolicyTrainer(
        collector=collector or ToyCollector(batches), loss_module=loss, optimizer=opt,
        total_frames=kwargs.pop("total_frames", sum(b.numel() for b in batches)), num_epochs=num_epochs,
        num_minibatches=num_minibatches, max_grad_norm=max_grad_norm, lr_schedule=sched, progress_bar=False,
        seed=seed, **kwargs,
    )
    return trainer, loss, opt


def hand_update(batch, *, lr=0.1, seed=3, num_epochs=2, num_minibatches=3, max_grad_norm=0.5, adaptive=None):
    """One iteration by hand (float64): per epoch a fresh ``randperm`` of the trainer's seeded generator cut
    in order into equal minibatches; per minibatch the gradient of loss_fit + loss_entropy, the global L2
    norm, torch's clip factor ``min(1, c / (norm + 1e-6))``, an SGD step at the current lr, then the adaptive
    rule on the minibatch's mean KL. Returns the final (w, b), the minibatches' x, the iteration means and lr."""
    flat = batch.reshape(-1)
    rows = flat.shape[0]
    mb = rows // num_minibatches
    gen = torch.Generator().manual_seed(seed)
    w, b = torch.tensor(W0, dtype=torch.float64), torch.tensor(B0, dtype=torch.float64)
    seen, sums, steps = [], {}, num_epochs * num_minibatches
    for _ in range(num_epochs):
        perm = torch.randperm(rows, generator=gen)
        for i in range(num_minibatches):
            sub = flat[perm[i * mb: (i + 1) * mb]]
            x = sub["x"].double()
            seen.append(sub["x"])
            gw, gb = 2 * (w - x).mean(0), b.clone()
            norm = float(torch.sqrt((gw ** 2).sum() + (gb ** 2).sum()))
            clip = 1.0 if max_grad_norm is None else min(1.0, max_grad_norm / (norm + 1e-6))
            values = {"loss_fit": float(((w - x) ** 2).sum(-1).mean()), "loss_entropy": float(0.5 * (b ** 2).sum()),
                      "probe": float(x[:, 0].mean()), "kl_approx": float(sub["k"].double().mean()), "grad_norm": norm}
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v / steps
            w, b = w - lr * clip * gw, b - lr * clip * gb
            if adaptive is not None:
                thr, factor = adaptive
                kl = values["kl_approx"]
                lr = lr / factor if kl > 2 * thr else lr * factor if kl < thr / 2 else lr
    return w, b, seen, sums, lr


# ----------------------------------------------------------------------------- minibatches and the step
def test_each_epoch_cuts_a_fresh_seeded_permutation_into_equal_minibatches():
    """Minibatch i of epoch e is flat[perm_e[i*mb:(i+1)*mb]], with perm_e the e-th randperm of the seeded generator."""
    batch = toy_batch()
    trainer, _, _ = toy_trainer([batch.clone()])
    seen = []
    trainer.register_op("process_optim_batch", lambda sub: seen.append(sub["x"].clone()) or sub)
    trainer.train()
    _, _, expected, _, _ = hand_update(batch)
    assert len(seen) == len(expected) == 6
    for got, want in zip(seen, expected):
        assert torch.equal(got, want)
    # the two epochs see the rows in different orders
    assert not torch.equal(torch.cat(seen[:3]), torch.cat(seen[3:]))


def test_clipped_sgd_iteration_and_its_logged_means_match_the_hand_loop():
    """Clipped SGD on the sum of every loss_* term, by hand; logged losses and grad_norm (pre-clip) are step means."""
    batch = toy_batch()
    trainer, loss, _ = toy_trainer([batch.clone()])
    trainer.train()
    w, b, _, means, _ = hand_update(batch)
    torch.testing.assert_close(loss.w.detach().double(), w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.b.detach().double(), b, rtol=1e-5, atol=1e-6)
    h = trainer.history[-1]
    for k, v in means.items():
        assert h[f"train/{k}"] == pytest.approx(v, rel=1e-5), k
    assert means["grad_norm"] > 0.5  # above max_grad_norm: the clip acted, and the logged norm is the unclipped one


def test_grad_norm_without_clipping_is_the_global_l2_norm_and_steps_are_unscaled():
    """max_grad_norm=None: grad_norm = sqrt(sum over parameters of |grad|^2), and the step is plain SGD."""
    batch = toy_batch(seed=1)
    trainer, loss, _ = toy_trainer([batch.clone()], max_grad_norm=None, lr=0.05)
    trainer.train()
    w, b, _, means, _ = hand_update(batch, max_grad_norm=None, lr=0.05)
    torch.testing.assert_close(loss.w.detach().double(), w, rtol=1e-5, atol=1e-6)
    assert trainer.history[-1]["train/grad_norm"] == pytest.approx(means["grad_norm"], rel=1e-5)


def test_the_adaptive_rate_changes_after_the_step_it_follows():
    """Each minibatch steps with the lr the previous minibatches left, then the rule reads its KL."""
    batch = toy_batch(seed=2)
    thr, factor = 0.012, 1.5  # the per-minibatch KLs (mean of U(0, 0.05)) fall on both sides of the band
    sched = lambda opt: LearningRateSchedule(opt, mode="adaptive", kl_threshold=thr, factor=factor, min_lr=1e-6,
                                             max_lr=1.0)
    trainer, loss, opt = toy_trainer([batch.clone()], schedule=sched)
    lrs = []
    trainer.register_op("post_optim", lambda: lrs.append(float(opt.param_groups[0]["lr"])))
    trainer.train()
    w, b, _, _, lr_end = hand_update(batch, adaptive=(thr, factor))
    assert len(set(round(x, 9) for x in lrs)) > 1  # the rule did move the rate
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(lr_end, rel=1e-6)
    torch.testing.assert_close(loss.w.detach().double(), w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.b.detach().double(), b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- frames, log lines, fps
class OneRankOfTwo:
    """A stand-in DistributedSync for rank 0 of two ranks that collected the same data."""

    world_size, rank, is_main = 2, 0, True

    def broadcast_module(self, module):
        pass

    def average_gradients_(self, params, extra):
        pass

    def sum_(self, tensors):
        for t in tensors:
            t.mul_(2)
        return tensors

    def reduce_episode_stats(self, stats):
        return stats


def test_log_lines_fall_every_log_interval_iterations_and_after_the_last():
    """log_interval=3 over 4 iterations: metrics after iterations 3 and 4 (the end), nowhere else."""
    trainer, _, _ = toy_trainer([toy_batch(seed=s) for s in range(4)], log_interval=3)
    trainer.train()
    assert [h["train/iteration"] for h in trainer.history] == [3.0, 4.0]
    assert [h["train/frames"] for h in trainer.history] == [3.0 * FPB, 4.0 * FPB]


def test_fps_is_the_frames_since_the_previous_log_line_over_its_time(monkeypatch):
    """fps = (frames now - frames at the last log line) / seconds since it; fps_per_rank = fps / world_size."""
    import torchrl_sapg.trainers.on_policy as on_policy

    ticks = iter([0.0, 2.0, 3.0, 7.0])  # the start, then one reading per log line
    monkeypatch.setattr(on_policy, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    trainer, _, _ = toy_trainer([toy_batch(seed=s) for s in range(6)], log_interval=2)
    trainer.train()
    assert [h["train/fps"] for h in trainer.history] == pytest.approx([2 * FPB / 2.0, 2 * FPB / 1.0, 2 * FPB / 4.0])
    ticks = iter([0.0, 4.0])
    sync = toy_trainer([toy_batch(seed=s) for s in range(2)], total_frames=4 * FPB, log_interval=5,
                       sync=OneRankOfTwo())[0]
    sync.train()
    assert sync.history[-1]["train/fps"] == pytest.approx(4 * FPB / 4.0)
    assert sync.history[-1]["train/fps_per_rank"] == pytest.approx(4 * FPB / 4.0 / 2)


def _with_nan_rows(batch, rows, key="observation", step=0):
    batch = batch.clone()
    v = batch.get(key).clone()
    v[rows, step] = float("nan")
    batch.set(key, v)
    return batch


def test_dropped_rows_are_summed_between_log_lines_then_reset():
    """nonfinite='drop': train/nonfinite_rows is the number of rows dropped since the previous log line."""
    bad = [[1], [0, 3], [], [2, 5, 6]]  # rows of an 8-row batch, iteration by iteration
    batches = [_with_nan_rows(toy_batch(seed=i, n=8), rows) for i, rows in enumerate(bad)]
    trainer, _, _ = toy_trainer(batches, nonfinite="drop", log_interval=2, num_minibatches=4)
    trainer.train()
    assert [h["train/nonfinite_rows"] for h in trainer.history] == [3.0, 3.0]


def test_nan_metrics_stay_in_history_but_never_reach_the_logger():
    """A policy with no finished episode logs NaN: kept in trainer.history, not written to the logger."""
    written = []
    logger = SimpleNamespace(log_scalar=lambda key, value, step: written.append((key, value, step)))
    trainer, _, _ = toy_trainer([toy_batch()], logger=logger)
    trainer.train()
    h = trainer.history[-1]
    assert math.isnan(h["policy/1/return"]) and h["policy/0/return"] == 1.0
    keys = {k for k, _, _ in written}
    assert "policy/1/return" not in keys and "policy/0/return" in keys
    assert keys == {k for k, v in h.items() if not math.isnan(v)}
    assert all(step == FPB for _, _, step in written)


# ----------------------------------------------------------------------------- checkpoints and normalisers
def test_the_checkpoint_interval_counts_from_the_restored_checkpoint(tmp_path):
    """After a resume at frame F, the next interval save comes at F + checkpoint_interval, not before."""
    batches = [toy_batch(seed=s) for s in range(5)]
    first, _, _ = toy_trainer(batches[:2], total_frames=5 * FPB, checkpoint_path=str(tmp_path / "a.pt"),
                              checkpoint_interval=2 * FPB)
    first.train()  # the collector runs dry after 2 batches: saved at 2 * FPB
    again, _, _ = toy_trainer(batches[2:], total_frames=5 * FPB, checkpoint_path=str(tmp_path / "b.pt"),
                              checkpoint_interval=2 * FPB)
    again.load(str(tmp_path / "a.pt"))
    saves, save = [], again.save
    again.save = lambda path=None: saves.append(again.collected_frames) or save(path)
    again.train()
    assert saves == [4 * FPB, 5 * FPB]  # the interval save at 2 + 2 batches, then the final one


def test_normalizers_see_exactly_the_collected_rows_not_the_rows_a_hook_appends():
    """The normaliser folds in the N*T collected observations only, not rows a batch_process hook appends."""
    batch = toy_batch(seed=4)
    norm = ObservationNormalizer((3,), clip=None)
    trainer, _, _ = toy_trainer([batch.clone()], obs_normalizers=[norm], num_minibatches=2)
    extra = toy_batch(seed=9, n=2)
    extra["observation"] = extra["observation"] + 100.0
    trainer.register_op("batch_process", lambda b: torch.cat([b, extra], 0))
    trainer.train()
    obs = batch["observation"].reshape(-1, 3).double()
    n = obs.shape[0]
    mean = obs.sum(0) / (n + EPS)
    var = (((obs - mean) ** 2).sum(0) + EPS * (1 + mean ** 2)) / (n + EPS)
    assert float(norm.stats.count) == pytest.approx(n + EPS, rel=1e-6)
    torch.testing.assert_close(norm.stats.mean.double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norm.stats.var.double(), var, rtol=1e-5, atol=1e-6)


def test_a_nan_next_observation_alone_stops_the_batch():
    """The screen reads ("next", observation) too: a NaN only in the last step's next observation raises."""
    batch = _with_nan_rows(toy_batch(), [2], key=("next", "observation"), step=T - 1)
    trainer, loss, _ = toy_trainer([batch])
    with pytest.raises(FloatingPointError, match=r"\('next', 'observation'\).*env rows \[2\]"):
        trainer.train()
    assert torch.equal(loss.w.detach(), torch.tensor(W0))  # nothing trained on it


def test_dropped_rows_are_copies_of_finite_rows_of_their_own_policy_block():
    """nonfinite='drop' with 2 policies: each bad row of block j becomes a copy of a finite row of block j."""
    n = 16
    batch = toy_batch(seed=5, n=n)
    batch["row"] = torch.arange(n).unsqueeze(-1).expand(n, T).clone()
    bad = [9, 10, 12, 13, 15]  # block 1 = rows 8..15 (block 0 has one bad row: 2)
    batch = _with_nan_rows(batch, bad + [2])
    seen = []
    trainer, _, _ = toy_trainer([batch], nonfinite="drop", num_minibatches=4)
    trainer.register_op("batch_process", lambda b: seen.append(b.clone()) or b)
    trainer.train()
    out = seen[0]
    src = out["row"][:, 0]
    for r in range(n):
        if r in bad + [2]:
            assert int(src[r]) not in bad + [2] and int(src[r]) // 8 == r // 8, (r, int(src[r]))
            assert torch.equal(out["x"][r], batch["x"][int(src[r])])  # the whole row, every key
        else:
            assert int(src[r]) == r


def test_screen_draws_the_replacements_from_the_given_generator_within_each_block():
    """Bad row k of block j becomes row j*block + pick[j, k], drawn from block j's finite rows by the generator."""
    blocks, block = 2, 6
    obs = torch.arange(12.0).unsqueeze(-1)
    bad = torch.zeros(12, dtype=torch.bool)
    bad[[1, 7, 8, 11]] = True
    obs[bad] = float("inf")
    td = TensorDict({"observation": obs}, [12])
    torch.manual_seed(123)  # the global stream must not matter
    out, dropped = screen_nonfinite(td, ["observation"], mode="drop", where="here", blocks=blocks,
                                    generator=torch.Generator().manual_seed(7))
    good = (~bad).reshape(blocks, block).float()
    pick = torch.multinomial(good, block, replacement=True, generator=torch.Generator().manual_seed(7))
    expected = torch.arange(12.0)
    for r in bad.nonzero().flatten().tolist():
        j = r // block
        expected[r] = j * block + pick[j, r % block]
    assert dropped == 4
    assert torch.equal(out["observation"].flatten(), expected)


def test_a_policy_block_with_no_finite_row_raises():
    """nonfinite='drop' cannot refill a policy whose every env row is bad: FloatingPointError naming it."""
    obs = torch.arange(8.0).unsqueeze(-1)
    obs[4:] = float("nan")  # all of block 1, none of block 0
    with pytest.raises(FloatingPointError, match="every env row of a policy"):
        screen_nonfinite(TensorDict({"observation": obs}, [8]), ["observation"], mode="drop", where="x", blocks=2)


# ----------------------------------------------------------------------------- the optimiser step
class _Fn(nn.Module):
    """A one-parameter loss module whose loss_* term is ``fn(w)``."""

    def __init__(self, fn, w0=(1.0, 2.0)):
        super().__init__()
        self.w, self.fn = nn.Parameter(torch.tensor(w0)), fn

    def forward(self, td):
        return TensorDict({"loss_a": self.fn(self.w)}, [])


def _step(fn, *, lr=0.1, max_grad_norm=1.0, schedule=None):
    module = _Fn(fn)
    opt = torch.optim.SGD(module.parameters(), lr=lr)
    sched = schedule(opt) if schedule is not None else None
    stepper = ClippedGradientStepper(max_grad_norm=max_grad_norm, lr_schedule=sched)
    trainer = SimpleNamespace(optimizer=opt, loss_module=module, sync=None)
    return module, opt, stepper, trainer


@pytest.mark.parametrize("case", ["nan_gradient_finite_loss", "finite_gradient_inf_loss"])
def test_a_step_with_a_nonfinite_loss_or_gradient_leaves_the_weights(case):
    """A non-finite loss OR gradient norm skips the whole step; the lr is restored and the next step is plain SGD."""
    bad = {  # at w = 0: a finite loss whose gradient is (NaN, 3); an infinite loss whose gradient is (1, 1)
        "nan_gradient_finite_loss": lambda w: torch.sqrt(w[0].abs()) + 3.0 * w[1],
        "finite_gradient_inf_loss": lambda w: (w + float("inf")).sum(),
    }[case]
    use = {"fn": bad}
    module, opt, stepper, trainer = _step(lambda w: use["fn"](w), lr=0.1, max_grad_norm=None)
    with torch.no_grad():
        module.w.zero_()
    out = stepper.step(trainer, TensorDict({}, []))
    assert not (torch.isfinite(out["loss_a"]) & torch.isfinite(out["grad_norm"]))
    assert torch.equal(module.w.detach(), torch.zeros(2))
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(0.1)
    use["fn"] = lambda w: (3.0 * w).sum()  # gradient 3 everywhere
    stepper.step(trainer, TensorDict({}, []))
    torch.testing.assert_close(module.w.detach(), torch.full((2,), -0.3))


def test_a_linear_schedule_never_runs_the_kl_actors_pass():
    """Only the adaptive rule reads the KL: with a linear (or fixed) schedule the kl_actor is never called."""

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"the KL pass ran ({name})")

    for mode in ("linear", "fixed"):
        module, opt, _, trainer = _step(lambda w: (w ** 2).sum())
        sched = LearningRateSchedule(opt, mode=mode, total_frames=10)
        stepper = ClippedGradientStepper(lr_schedule=sched, kl_actor=Untouchable())
        out = stepper.step(trainer, TensorDict({}, []))
        assert "kl" not in out.keys() and stepper.minibatch_reads == frozenset()


# ----------------------------------------------------------------------------- learning-rate schedules
def test_lr_schedule_defaults_are_rl_games_adaptive_016_15_1e6_1e2():
    """LearningRateSchedule(opt) defaults: adaptive, kl_threshold 0.016, factor 1.5, lr within [1e-6, 1e-2]."""
    p = nn.Parameter(torch.zeros(1))

    def moved(lr0, kl, steps=1):
        opt = torch.optim.SGD([p], lr=lr0)
        sched = LearningRateSchedule(opt)
        for _ in range(steps):
            sched.on_minibatch(torch.tensor(kl))
        return float(sched.lr)

    assert moved(1e-3, 0.0321) == pytest.approx(1e-3 / 1.5)
    assert moved(1e-3, 0.0319) == pytest.approx(1e-3)
    assert moved(1e-3, 0.0081) == pytest.approx(1e-3)
    assert moved(1e-3, 0.0079) == pytest.approx(1e-3 * 1.5)
    assert moved(1e-3, 1.0, steps=40) == pytest.approx(1e-6)
    assert moved(1e-3, 0.0, steps=40) == pytest.approx(1e-2)


def test_a_kl_exactly_on_either_band_edge_leaves_the_rate():
    """Both comparisons are strict: KL == 2 thr and KL == thr / 2 leave an lr that is inside its bounds."""
    p = nn.Parameter(torch.zeros(1))
    for kl, lr in ((0.5, 1e-3), (0.125, 1e-3), (0.5001, 1e-3 / 2), (0.1249, 2e-3)):
        opt = torch.optim.SGD([p], lr=1e-3)
        sched = LearningRateSchedule(opt, mode="adaptive", kl_threshold=0.25, factor=2.0, min_lr=1e-5, max_lr=1e-1)
        sched.on_minibatch(torch.tensor(kl))
        assert float(sched.lr) == pytest.approx(lr), kl


def test_the_adaptive_rule_reads_the_mean_of_a_per_row_kl():
    """A per-row (unreduced) KL drives the adaptive rule through its mean, in the schedule and in the stepper."""
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1e-3)
    sched = LearningRateSchedule(opt, mode="adaptive", kl_threshold=0.1)
    sched.on_minibatch(torch.tensor([0.0, 0.0, 0.0, 0.3]))  # mean 0.075: in the band; max 0.3 is above it
    assert float(sched.lr) == pytest.approx(1e-3)
    sched.on_minibatch(torch.tensor([0.0, 0.0, 0.0, 0.19]))  # mean 0.0475 < 0.05: up
    assert float(sched.lr) == pytest.approx(1.5e-3)

    class PerRowKL(_Fn):
        def forward(self, td):
            return TensorDict({"loss_a": (self.w ** 2).sum(), "kl_approx": torch.tensor([0.0, 0.0, 0.0, 0.3])}, [])

    module = PerRowKL(None)
    opt = torch.optim.SGD(module.parameters(), lr=1e-3)
    sched = LearningRateSchedule(opt, mode="adaptive", kl_threshold=0.1)
    ClippedGradientStepper(lr_schedule=sched).step(SimpleNamespace(optimizer=opt, loss_module=module, sync=None),
                                                   TensorDict({}, []))
    assert float(sched.lr) == pytest.approx(1e-3)


def test_a_restored_linear_schedule_decays_from_the_checkpoints_lr0():
    """load_state_dict restores initial_lrs (PBT rewrites them): a resumed linear lr decays from the saved lr0."""
    p = nn.Parameter(torch.zeros(1))
    saved = LearningRateSchedule(torch.optim.SGD([p], lr=1e-3), mode="linear", total_frames=1000)
    saved.initial_lrs = [4e-4]  # what PBT writes when it changes a member's learning rate
    fresh_opt = torch.optim.SGD([p], lr=1e-3)
    fresh = LearningRateSchedule(fresh_opt, mode="linear", total_frames=1000)
    fresh.load_state_dict(saved.state_dict())
    fresh.on_iteration(250)
    assert float(fresh_opt.param_groups[0]["lr"]) == pytest.approx(4e-4 * 0.75)


# ----------------------------------------------------------------------------- evaluation
class ScriptedEnv(EnvBase):
    """Env i's k-th episode lasts ``lengths[i][k]`` steps; step s (1-based) of it pays ``base[i] * s + action``;
    ``success`` is the episode index plus 0.5 once the episode has started."""

    def __init__(self, lengths, base):
        n = len(lengths)
        super().__init__(batch_size=torch.Size([n]))
        self.lengths = torch.tensor(lengths, dtype=torch.long)
        self.base = torch.tensor(base, dtype=torch.float32)
        self.observation_spec = Composite(observation=Unbounded(shape=(n, 1)), success=Unbounded(shape=(n, 1)),
                                          shape=(n,))
        self.action_spec = Bounded(-1.0, 1.0, shape=(n, 1))
        self.reward_spec = Unbounded(shape=(n, 1))
        self.t = torch.zeros(n, dtype=torch.long)
        self.ep = torch.zeros(n, dtype=torch.long)

    def _obs(self):
        success = self.ep.float() + 0.5 * (self.t > 0).float()
        return TensorDict({"observation": self.t.float().unsqueeze(-1), "success": success.unsqueeze(-1)},
                          self.batch_size)

    def _reset(self, td):
        mask = td.get("_reset").reshape(-1) if td is not None and "_reset" in td.keys() else torch.ones(
            self.batch_size, dtype=torch.bool)
        self.ep = torch.where(mask & (self.t > 0), self.ep + 1, self.ep)
        self.t = torch.where(mask, torch.zeros_like(self.t), self.t)
        out = self._obs()
        out.set("done", torch.zeros(*self.batch_size, 1, dtype=torch.bool))
        out.set("terminated", torch.zeros(*self.batch_size, 1, dtype=torch.bool))
        return out

    def _step(self, td):
        self.t = self.t + 1
        reward = self.base * self.t.float() + td.get("action").reshape(-1)
        length = self.lengths[torch.arange(len(self.t)), self.ep.clamp_max(self.lengths.shape[1] - 1)]
        done = (self.t >= length).unsqueeze(-1)
        out = self._obs()
        out.set("reward", reward.unsqueeze(-1))
        out.set("done", done)
        out.set("terminated", done.clone())
        return out

    def _set_seed(self, seed):
        return seed


class ModeRecorder(nn.Module):
    """Action 0; records the exploration type each call runs under."""

    def __init__(self):
        super().__init__()
        self.modes = []

    def forward(self, obs):
        from torchrl.envs.utils import exploration_type

        self.modes.append(exploration_type())
        return torch.zeros_like(obs)


LENGTHS = [[2, 9], [3, 1], [1, 7], [4, 2]]  # env 1's second episode ends while env 3's first still runs
BASE = [1.0, -1.0, 0.5, 2.0]


def _first_episode(i):
    """Return and length of env i's first episode by hand."""
    length = LENGTHS[i][0]
    return BASE[i] * length * (length + 1) / 2, float(length)


def test_evaluation_counts_each_envs_first_episode_and_averages_per_policy_block():
    """Per policy: block means of each env's FIRST episode return (reward sum), length, final success; mode as asked."""
    from torchrl.envs import ExplorationType

    from torchrl_sapg.trainers.evaluation import evaluate_policies

    recorder = ModeRecorder()
    actor = TensorDictModule(recorder, ["observation"], ["action"])
    stats = evaluate_policies(ScriptedEnv(LENGTHS, BASE), actor, num_policies=2)
    first = [_first_episode(i) for i in range(4)]
    want_return = [(first[0][0] + first[1][0]) / 2, (first[2][0] + first[3][0]) / 2]  # -1.5, 10.25
    want_length = [(first[0][1] + first[1][1]) / 2, (first[2][1] + first[3][1]) / 2]
    assert stats["return"].tolist() == pytest.approx(want_return)
    assert stats["length"].tolist() == pytest.approx(want_length)
    assert stats["success"].tolist() == pytest.approx([0.5, 0.5])  # read at the first episode's end
    assert len(recorder.modes) == 4  # it stops as soon as every first episode ended
    assert set(recorder.modes) == {ExplorationType.DETERMINISTIC}
    recorder.modes.clear()
    evaluate_policies(ScriptedEnv(LENGTHS, BASE), actor, num_policies=2, deterministic=False)
    assert set(recorder.modes) == {ExplorationType.RANDOM}


def test_evaluation_max_steps_is_the_number_of_env_steps_allowed():
    """max_steps=4 finishes first episodes of at most 4 steps; max_steps=3 raises."""
    from torchrl_sapg.trainers.evaluation import evaluate_policies

    actor = TensorDictModule(ModeRecorder(), ["observation"], ["action"])
    stats = evaluate_policies(ScriptedEnv(LENGTHS, BASE), actor, num_policies=2, max_steps=4)
    assert stats["length"].tolist() == [2.5, 2.5]
    with pytest.raises(RuntimeError, match="max_steps=3"):
        evaluate_policies(ScriptedEnv(LENGTHS, BASE), actor, num_policies=2, max_steps=3)


# ----------------------------------------------------------------------------- observation normaliser
def test_normalizer_clips_at_plus_minus_5_by_default():
    """ObservationNormalizer's default clip is 5 (docs/trainer.md): (x - mean) / std clamped to [-5, 5]."""
    norm = ObservationNormalizer(2)
    norm.update(torch.tensor([[-1.0, 0.0], [1.0, 2.0]]))
    mean, var = norm.stats.mean.double(), norm.stats.var.double()
    x = torch.tensor([[100.0, 1.0], [-100.0, 1.5], [3.0, 9.0]])
    want = ((x.double() - mean) / var.sqrt()).clamp(-5, 5)
    torch.testing.assert_close(norm(x).double(), want, rtol=1e-5, atol=1e-6)
    assert norm(x)[0, 0] == 5.0 and norm(x)[1, 0] == -5.0
