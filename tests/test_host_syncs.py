"""Host syncs of training and collection, counted on CPU (and checked on CUDA where there is one).

On an accelerator, reading a tensor on the host (``.item()``, ``bool(t)``, ``int(t)``) or an op whose
output size depends on the data (``nonzero``, a boolean-mask index) waits for every queued kernel.
A ``TorchDispatchMode`` sees those ops on CPU tensors too, so these tests find them without a GPU:
the update (all mini-epochs) makes none, each batch makes only the few its docstrings name, and
collection on an embedded env adds none to TorchRL's partial-reset loop. ``check_policy_ids`` reads
ids on the host on CPU only (``torch._assert_async`` elsewhere), so its reads are set apart. The
``gpu``-marked test runs the update under CUDA's sync debug mode instead.
"""
from __future__ import annotations

import traceback
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torchrl.objectives.value import GAE

from torchrl_sapg.collectors import PopulationCollector
from torchrl_sapg.envs import make_env
from torchrl_sapg.modules import make_actor_critic
from torchrl_sapg.objectives import OffPolicyClipPPOLoss, SAPGLoss
from torchrl_sapg.trainers import LearningRateSchedule, OnPolicyTrainer

aten = torch.ops.aten
_HOST_READS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.nonzero.default,
               aten.masked_select.default, aten._unique2.default, aten.unique_dim.default,
               aten.unique_consecutive.default, aten.repeat_interleave.Tensor}
#: reads on CPU only: on an accelerator these checks are queued with torch._assert_async, and the
#: terminal fill writes without first testing for an end
_CPU_ONLY = {"latents.check_policy_ids", "sapg._check_env_major", "terminal_fill._post_step_mdp_hooks"}


class HostReads(TorchDispatchMode):
    """Counts the ops that sync with the host on an accelerator, by the function that issued them
    (``"<file stem>.<function>"``)."""

    def __init__(self):
        super().__init__()
        self.sites: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        bool_index = func is aten.index.Tensor and any(i is not None and i.dtype == torch.bool for i in args[1])
        if func in _HOST_READS or bool_index:
            caller = next(f for f in reversed(traceback.extract_stack()[:-1])  # skips torch and <genexpr> frames
                          if "/torch/" not in f.filename.replace("\\", "/") and not f.name.startswith("<"))
            self.sites[f"{Path(caller.filename).stem}.{caller.name}"] += 1
        return func(*args, **(kwargs or {}))

    def outside(self, allowed) -> dict:
        return {site: n for site, n in self.sites.items() if site not in allowed}


def _trainer(algo: str, device: str = "cpu"):
    m = 3 if algo == "sapg" else 1
    env = make_env("pendulum", 12, device=device, seed=0)
    ac = make_actor_critic(3, 1, num_policies=m, latent_dim=4 if m > 1 else 0, hidden_sizes=(16,), device=device)
    if algo == "sapg":  # the paper's per-follower entropy bonus (Sec. 4.5)
        loss = SAPGLoss(ac.actor, ac.critic, num_policies=m, entropy_sigma=0.005)
    else:
        loss = OffPolicyClipPPOLoss(ac.actor, ac.critic, entropy_coeff=0.01)
    optimizer = torch.optim.Adam(loss.parameters(), lr=3e-4, fused=True)
    trainer = OnPolicyTrainer(
        collector=PopulationCollector(env, ac.actor, num_policies=m, frames_per_batch=12 * 8),
        loss_module=loss, optimizer=optimizer, total_frames=10 * 12 * 8, num_epochs=2, num_minibatches=2,
        value_estimator=GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic),
        lr_schedule=LearningRateSchedule(optimizer, mode="adaptive", kl_threshold=0.016),
        kl_actor=ac.actor, kl_reduction="max_policy" if m > 1 else "mean", max_grad_norm=1.0,
        obs_normalizers=[ac.obs_normalizer], progress_bar=False, seed=0,
    )
    if algo == "sapg":
        trainer.register_op("batch_process", loss.aggregate)
    return trainer


@pytest.mark.parametrize("algo", ["ppo", "sapg"])
def test_the_update_never_reads_the_device_and_a_batch_only_where_documented(algo):
    trainer = _trainer(algo)
    batches = iter(trainer.collector)
    for _ in range(2):  # the second iteration runs with every lazy setting in place
        batch = next(batches)
        per_batch, update = HostReads(), HostReads()
        with per_batch:
            batch = trainer._screen_nonfinite(batch, batch.numel())
            batch = trainer._process_batch_hook(trainer._estimate_values(batch))
        with update:
            losses = trainer.optim_steps(batch)
        assert torch.isfinite(losses["loss_entropy"]).all()
        # every mini-epoch step: loss forward (with the entropy bonus), backward, clip, NaN-safe fused Adam, adaptive LR
        assert update.outside(_CPU_ONLY) == {}
        # per batch: the NaN screen, the value budget (estimate_values), TorchRL's GAE NaN check,
        # and SAPG's V(s') budget of the relabelled rows (values_and_next)
        documented = {"screening.screen_nonfinite", "value.shifted_budget", "advantages._sanitize_next_obs_nan",
                      "value._steps_of"}
        assert set(per_batch.outside(_CPU_ONLY)) <= documented, per_batch.sites
        assert all(n == 1 for n in per_batch.outside(_CPU_ONLY).values()), per_batch.sites


@pytest.mark.parametrize("lr_schedule", ["fixed", "adaptive"])
@pytest.mark.parametrize("recurrent", [False, True], ids=["mlp", "lstm"])
def test_the_in_process_pbt_update_reads_the_host_once_per_batch(recurrent, lr_schedule):
    """``PopulationLearner.update`` (all mini-epochs of every member) reads one number on the host: how many
    epochs the members run (their hyperparameters, on the device); its optimiser steps and the KL rule on the
    members' learning rates read nothing."""
    from torchrl.envs import Compose, TransformedEnv

    from torchrl_sapg.population.pbt_inprocess import (EnsembleActor, PolicyEnsemble, PopulationLearner,
                                                       RecurrentEnsembleActor, RecurrentEnsembleValue,
                                                       RecurrentPolicyEnsemble, ensemble_collection_policy)

    m, env = 3, make_env("pendulum", 12, seed=0, max_episode_steps=5)
    if recurrent:
        ens = RecurrentPolicyEnsemble(3, 1, num_members=m, hidden_sizes=(16,), lstm_hidden=8)
        env = TransformedEnv(env, Compose(*ens.env_transforms()))
        policy = ensemble_collection_policy(RecurrentEnsembleActor(ens), RecurrentEnsembleValue(ens))
    else:
        ens = PolicyEnsemble(3, 1, num_members=m, hidden_sizes=(16,))
        policy = EnsembleActor(ens)
    hyper = {"lr": 1e-3, "clip_epsilon": 0.2, "entropy_coeff": 0.01, "critic_coeff": 1.0, "gamma": 0.99,
             "lmbda": 0.95, "num_epochs": [2, 1, 2]}
    learner = PopulationLearner(ens, hyper, num_minibatches=2, max_grad_norm=1.0, lr_schedule=lr_schedule)
    batches = iter(PopulationCollector(env, policy, num_policies=m, frames_per_batch=12 * 8))
    for _ in range(2):  # the second update runs with the optimiser's layout in place
        batch = learner.estimate(next(batches))
        with HostReads() as update:
            learner.update(batch)
    assert update.sites == {"learner.update": 1}
    assert (learner.hp_lr != 1e-3).any() == (lr_schedule == "adaptive")  # the rule ran, on every member's own rate


def test_the_detector_sees_host_reads():
    """What the tests above rely on: ``.item()``, ``bool`` and a boolean mask are all seen, by caller."""
    x = torch.arange(4.0)

    def reader():
        return x.sum().item(), bool((x > 1).any()), x[x > 1]

    with HostReads() as reads:
        reader()
    assert reads.sites == {"test_host_syncs.reader": 3}


# TorchRL's step_and_maybe_reset: any_done and maybe_reset every step; the partial reset at a step with an end
TORCHRL_RESET_READS = {"common.any_done", "common.maybe_reset", "common._reset_check_done", "utils._update_during_reset"}


def reads_of_a_collected_batch(env, actor, num_policies: int, frames_per_batch: int):
    """The second batch of a ``PopulationCollector`` on ``env`` and the host reads made while collecting it."""
    batches = iter(PopulationCollector(env, actor, num_policies=num_policies, frames_per_batch=frames_per_batch))
    next(batches)
    with HostReads() as reads:
        batch = next(batches)
    return batch, reads


@pytest.mark.parametrize("name", ["pendulum", "reach_grasp_carry"])
def test_collection_on_an_embedded_env_reads_only_where_torchrl_resets(name):
    """The embedded envs and ``PopulationCollector`` add no host reads to TorchRL's partial-reset loop."""
    env = make_env(name, 12, seed=0, max_episode_steps=5)
    ac = make_actor_critic(env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1],
                           num_policies=3, latent_dim=4, hidden_sizes=(16,))
    batch, reads = reads_of_a_collected_batch(env, ac.actor, num_policies=3, frames_per_batch=12 * 8)
    assert batch["next", "done"].any()
    assert set(reads.outside(_CPU_ONLY)) <= TORCHRL_RESET_READS, reads.sites


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("algo", ["ppo", "sapg"])
def test_the_update_does_not_synchronise_on_cuda(algo):
    """The device-side counterpart of the first test: CUDA's sync debug mode raises at any synchronising call."""
    trainer = _trainer(algo, device="cuda")
    batches = iter(trainer.collector)
    for check in (False, True):  # the first update allocates the optimiser state (scalar copies to the device)
        batch = next(batches)
        batch = trainer._screen_nonfinite(batch, batch.numel())
        batch = trainer._process_batch_hook(trainer._estimate_values(batch))
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error" if check else "default")
        try:
            losses = trainer.optim_steps(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(losses["loss_objective"]).all()
