"""Learner-update and end-to-end throughput of PPO, SAPG and EPO against TorchRL's own PPO loop,
with a per-phase profile of every variant and the update's distance from the device's GEMM rate.

This is the library's one learner benchmark: ``benchmarks/learner_update.py`` is a thin wrapper
that calls it. "PPO" here is always our PPO as the recipe builds it (same network family, same
trainer); SAPG / EPO overheads are always divided by it.

Four variants, each at every grid cell (N envs, M policies; horizon T; same network sizes):

* ``torchrl``: the baseline. TorchRL's ``ClipPPOLoss`` and ``GAE`` in a plain hand-written loop
  (GAE, then ``epochs`` x shuffled ``minibatches``: sum of the ``loss_*`` terms, Adam,
  ``clip_grad_norm_``, fixed learning rate), on a plain TorchRL network of the same sizes
  (``torchrl.modules.MLP`` actor with a state-independent log-std, ``MLP`` critic, ELU; no
  observation normaliser). No code of this library in the learner.
* ``ppo``: our PPO exactly as ``recipes/train.py`` builds it (``recipes/common.py``: one policy,
  the recipe's PPO loss, TorchRL's ``ClipPPOLoss`` semantics, + ``GAE``) inside
  ``OnPolicyTrainer`` (observation normaliser, analytic-KL adaptive learning rate, grad clip,
  hooks, per-iteration log).
* ``sapg``: the recipe's ``SAPGLoss`` with M policies (V-trace off-policy targets, the adaptive
  learning rate on the ``max_policy`` KL, as ``recipes/conf/algo/sapg.yaml`` sets them);
  ``aggregate`` runs as a ``batch_process`` hook (the leader's off-policy rows join the
  training batch).
* ``epo``: ``sapg`` plus the recipe's ``GeneticLatentScheduler``, registered in the trainer with
  ``trigger="interval"``, ``interval_frames=1``, ``warmup_frames=0``: one genetic step after
  every update, so its cost is counted. Every variant's env ends its episodes after exactly T
  steps (``max_episode_steps=T``) so every follower has a fitness in every batch.
* opt-in (``--variants ...``): ``ppo_nokl``, ``ppo`` without the per-minibatch analytic KL
  (``kl_actor=None``) and with a fixed learning rate: what the KL-adaptive schedule costs;
  ``sapg_td0``, ``sapg`` with the paper's one-step off-policy targets
  (``algo.off_policy_target=td0``; what ``learner_update.py`` used to call "sapg").

Measured for every (variant, N, M):

1. **Learner update.** One subprocess per cell collects one ``[N, T]`` batch from the embedded
   Pendulum (``make_env("pendulum", N)`` + ``PopulationCollector``, the cell's M-policy SAPG
   actor) and every variant learns from that same batch (PPO and the baseline first re-score
   its log-probs with their own actor, untimed). Timed: value estimation, (SAPG/EPO)
   aggregation, ``epochs`` x ``minibatches`` optimiser steps, and for our variants everything
   else ``OnPolicyTrainer.train()`` does per iteration (it is fed the stored batch). After
   the warm-up the variants are timed round-robin, ``--repeats`` rounds, so a change in the
   machine's load hits them alike; the median is reported. The overhead ratios are also paired
   round by round (``*_update_time_paired``: IQM of the per-round ratios and its 95% bootstrap
   interval over rounds), which cancels a drift between rounds. Rates: ``samples_per_s`` = rows the
   optimiser consumes per second (training-batch rows x epochs; SAPG/EPO train on N + N/M
   env-rows, the leader's off-policy rows included) and ``env_frames_per_s`` = N x T /
   ``update_s`` (collected frames the learner absorbs per second).
2. **End to end**, in the same subprocess afterwards: collection + update, one warm-up
   iteration per variant, then ``--e2e-iters`` round-robin rounds (ours: one iteration of
   ``OnPolicyTrainer.train()`` with the recipe's ``PopulationCollector``; baseline: TorchRL's
   ``Collector`` + the plain loop); frames/s = N x T / median iteration seconds.
3. **Per-phase profile** (``--profile``, on by default): ``--profile-iters`` further end-to-end
   iterations per eager variant (round-robin, after the timed ones) with wall-clock timers
   around every phase (``torch.cuda.synchronize`` at each timer on CUDA): ``collect``,
   ``value`` (GAE), ``aggregate`` (the ``batch_process`` hooks: SAPG/EPO's ``aggregate``),
   ``minibatch`` (shuffle, minibatch indexing and the loop's per-step hooks), ``loss_forward``
   (the loss module's forward), ``backward``, ``analytic_kl`` (the adaptive learning rate's
   no-grad actor pass), ``optimizer`` (sum of the loss terms, ``zero_grad``, grad clip, the
   non-finite guard, ``Adam.step``, the learning-rate rule), ``normalizer``,
   ``post_steps_hooks`` (EPO's genetic step), ``logging`` (metrics, the per-iteration host
   syncs) and ``other`` (the rest of the iteration). Library code is not edited: the timers
   wrap bound methods of the benchmark's own trainer instances (``_estimate_values``,
   ``_process_batch_hook``, ``optim_steps``, ``optimization_stepper.step``, the loss module's
   ``forward``...), plus ``torch.Tensor.backward`` and ``gaussian_kl`` while the
   profiled iterations run. Times are exclusive (a phase's nested phases are subtracted); the
   median of each phase over the iterations is reported, with its share of the update
   (everything but ``collect``).
4. **FLOP floor.** Every update's matmul FLOPs are counted on one extra (untimed) eager update
   by a ``TorchDispatchMode`` that adds up every matmul-like aten op as it runs (``mm``,
   ``addmm``, ``bmm``...; ``torch.utils.flop_counter``'s ``2 x m x k x n``; the backward's
   matmuls as autograd really runs them; GAE's ``vmap`` seen with physical shapes). The FLOPs
   are split by the profile phase they ran in: ``train_forward_backward`` (the minibatch
   losses and their backward), ``analytic_kl`` (an extra actor pass of the adaptive learning
   rate, if the trainer makes one), ``value_estimation`` (GAE: V(s) and V(s')), ``aggregate``
   (SAPG/EPO's re-scoring of the off-policy rows). So the count follows the passes the library
   really runs. The same worker times ``torch.mm`` of the update's largest matmul,
   ``[minibatch_rows, in] x [in, out]`` (the largest forward matmul the count saw in the loss),
   repeated: the device's practical FLOP/s for that shape. ``flop_floor_ratio`` = (update
   FLOPs / ``update_s``) / GEMM FLOP/s; 1.0 would be an update running every FLOP at that
   GEMM's rate.
5. **Memory**, one subprocess per eager variant and cell (its own high-water mark), over two
   end-to-end iterations: CPU, the process's peak RSS and its increase over those iterations
   (peak minus the RSS just before); CUDA, ``torch.cuda.max_memory_allocated``.
6. **torch.compile** (cells with N in ``--compile-num-envs``): the learner update again,
   compiled (``torch.compile``, ``--compile-backend``, default inductor): our variants through
   the trainer's own switch where it has one (``OnPolicyTrainer(compile=...)``, the recipe's
   ``train.compile``: loss forward, analytic KL and loss sum with their backward), else, like
   the baseline, the loss module's ``forward`` (``compile_scope`` in the JSON). Timed in the
   same rounds as the eager variants after ``--compile-warmup`` warm-up updates (the first
   compiles, the second absorbs a recompile). A failure is recorded as ``unsupported`` with
   the error's first line, a compile past ``--compile-timeout`` seconds as ``timeout``.

On a CPU device every process (the baseline's included) first calls
``torchrl_sapg.runtime.keep_freed_host_memory``, as the recipe does by default
(``--no-keep-freed-memory``: glibc's default, which page-faults every large activation afresh).

Every figure comes with its ratio to the eager ``torchrl`` baseline of the same cell in the same
run (``*_vs_torchrl``; time ratios > 1 are slower, rate ratios < 1 are slower), and every cell
with the overheads ``sapg_over_ppo`` and ``epo_over_ppo`` (update time, end-to-end time per
frame). N is rounded to the nearest multiple of M (printed).

    # the committed CPU run (results/throughput_cpu.json, ~50 min on 1 thread): torch.compile at N=4096 only
    python benchmarks/throughput.py --threads 1 --num-envs 4096 16384 --num-policies 6 64 --no-memory \
        --compile-num-envs 4096 --e2e-iters 2 --repeats 9
    python benchmarks/throughput.py --device cuda       # full grid, 5 epochs -> results/throughput_cuda.json
    python benchmarks/throughput.py --num-envs 16384 --num-policies 64 --no-compile   # one cell
    # one cell, profile and FLOP floor only (no compile, memory or extra e2e rounds)
    python benchmarks/throughput.py --threads 1 --num-envs 4096 --num-policies 6 --no-compile --no-memory \
        --e2e-iters 0 --repeats 2 --out /tmp/profile.json
    python benchmarks/throughput.py --quick --out /tmp/t.json   # tiny smoke run, in-process, no compile
    bash benchmarks/device_check.sh                     # the one-shot GPU check (docs/throughput.md)
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import math
import os
import platform
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "recipes"))
from env_throughput import _device_name, _sync  # noqa: E402
from rl_stats import ratio_summary  # noqa: E402

from torchrl_sapg.runtime import keep_freed_host_memory  # noqa: E402

VARIANTS = ("torchrl", "ppo", "sapg", "epo")
#: opt-in: our PPO without the per-minibatch analytic KL (kl_actor=None, fixed lr); SAPG with the
#: paper's one-step (TD(0)) off-policy targets instead of the recipe's V-trace
EXTRA_VARIANTS = ("ppo_nokl", "sapg_td0")
BASELINE = "torchrl"
#: the recipe algo each of our variants is built from, and its extra Hydra overrides
RECIPE_ALGO = {"ppo": "ppo", "ppo_nokl": "ppo", "sapg": "sapg", "sapg_td0": "sapg", "epo": "epo"}
EXTRA_OVERRIDES = {"sapg_td0": ["algo.off_policy_target=td0"]}


# ---------------------------------------------------------------------------- building
def nearest_multiple(n: int, m: int) -> int:
    """The multiple of ``m`` nearest to ``n`` (ties go up), at least ``m``."""
    return max(m, m * int(n / m + 0.5))


def recipe_config(algo: str, n: int, m: int, args, extra: list[str] = ()):
    """The recipe's Hydra config (``recipes/conf``) at this benchmark's sizes (plus ``extra`` overrides)."""
    from hydra import compose, initialize_config_dir

    overrides = [
        f"algo={algo}", "env=pendulum", f"env.num_envs={n}", f"+env.kwargs.max_episode_steps={args.horizon}",
        f"model.hidden_sizes=[{','.join(map(str, args.hidden))}]", f"train.horizon={args.horizon}",
        f"train.num_epochs={args.epochs}", f"train.num_minibatches={args.minibatches}",
        f"device={args.device}", "seed=0", "progress_bar=false", "logger=none",
    ]
    if algo != "ppo":
        overrides.append(f"algo.num_policies={m}")
    if algo == "epo":  # one genetic step after every update: its cost is part of the figure
        overrides += ["algo.epo.trigger=interval", "algo.epo.warmup_frames=0", "algo.epo.interval_frames=1"]
    overrides += list(extra)
    with initialize_config_dir(config_dir=str(ROOT / "recipes" / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def trainer_compiles() -> bool:
    """Whether ``OnPolicyTrainer`` has the ``compile`` switch (``train.compile``: the whole update step)."""
    import inspect

    from torchrl_sapg.trainers import OnPolicyTrainer

    return "compile" in inspect.signature(OnPolicyTrainer.__init__).parameters


def build_ours(variant: str, n: int, m: int, args, collector=None, agent_state=None, compile_options=None):
    """``(trainer, agent)`` as ``recipes/train.py`` builds them (no logger, no checkpoints).

    ``collector=None`` builds the recipe's env and ``PopulationCollector``; ``compile_options``
    (a dict of ``torch.compile`` arguments) turns on the trainer's ``compile`` switch."""
    from common import build_agent, build_env, build_loss, build_optimizer, register_algorithm_hooks

    from torchrl_sapg.trainers import LearningRateSchedule, OnPolicyTrainer

    population = list(args.population_override) if RECIPE_ALGO[variant] != "ppo" else []
    cfg = recipe_config(RECIPE_ALGO[variant], n, m, args, [*population, *EXTRA_OVERRIDES.get(variant, [])])
    torch.manual_seed(0)
    env = build_env(cfg) if collector is None else None
    agent = build_agent(cfg, env if env is not None else build_env(cfg, num_envs=cfg.algo.num_policies))
    if agent_state is not None:
        agent.actor.load_state_dict(agent_state["actor"])
        agent.critic.load_state_dict(agent_state["critic"])
    if collector is None:
        from torchrl_sapg.collectors import PopulationCollector

        collector = PopulationCollector(env, agent.actor, num_policies=cfg.algo.num_policies,
                                        frames_per_batch=n * args.horizon)
    t = cfg.train
    loss, value_estimator = build_loss(cfg, agent)
    optimizer = build_optimizer(cfg, loss)  # the recipe's (fused) Adam
    schedule = LearningRateSchedule(optimizer, mode="fixed" if variant == "ppo_nokl" else t.lr_schedule,
                                    kl_threshold=t.kl_threshold, min_lr=t.min_lr, max_lr=t.max_lr,
                                    total_frames=int(cfg.total_frames))
    # the arguments recipes/train.py passes (kl_reduction: max_policy for SAPG/EPO, mean for PPO)
    trainer = OnPolicyTrainer(
        collector=collector, loss_module=loss, optimizer=optimizer, total_frames=n * args.horizon,
        num_epochs=t.num_epochs, num_minibatches=t.num_minibatches, minibatch_size=t.minibatch_size,
        value_estimator=value_estimator, max_grad_norm=t.max_grad_norm, lr_schedule=schedule,
        reward_scale=t.reward_scale, kl_actor=None if variant == "ppo_nokl" else agent.actor,
        kl_reduction=cfg.algo.get("kl_reduction", "mean"), nonfinite=t.nonfinite,
        obs_normalizers=[agent.obs_normalizer] if agent.obs_normalizer is not None else [],
        headline_policy=int(cfg.algo.get("leader_id", 0)), log_interval=1, progress_bar=False, seed=0,
        **({"compile": compile_options} if compile_options is not None else {}),
    )
    register_algorithm_hooks(cfg, trainer, loss, agent, optimizer)
    return trainer, agent


class _GaussianMLP(torch.nn.Module):
    """Plain actor network: ``loc = MLP(obs)``, ``scale = exp(log_std)`` (state-independent)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden):
        super().__init__()
        from torchrl.modules import MLP

        self.mlp = MLP(in_features=obs_dim, out_features=act_dim, num_cells=list(hidden), activation_class=torch.nn.ELU)
        self.log_std = torch.nn.Parameter(torch.zeros(act_dim))

    def forward(self, observation):
        loc = self.mlp(observation)
        return loc, self.log_std.exp().expand_as(loc)


def build_torchrl(args, device):
    """The baseline: TorchRL's actor, critic, ``ClipPPOLoss``, ``GAE`` and Adam (recipe hyperparameters)."""
    from types import SimpleNamespace

    from tensordict.nn import TensorDictModule
    from torchrl.modules import MLP, IndependentNormal, ProbabilisticActor, ValueOperator
    from torchrl.objectives import ClipPPOLoss
    from torchrl.objectives.value import GAE

    t = recipe_config("ppo", 1, 1, args).train
    torch.manual_seed(0)
    actor = ProbabilisticActor(
        TensorDictModule(_GaussianMLP(3, 1, args.hidden), in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"], out_keys=["action"], distribution_class=IndependentNormal, return_log_prob=True,
    ).to(device)
    critic = ValueOperator(MLP(in_features=3, out_features=1, num_cells=list(args.hidden), activation_class=torch.nn.ELU),
                           in_keys=["observation"]).to(device)
    loss = ClipPPOLoss(actor, critic, clip_epsilon=t.clip_epsilon, entropy_bonus=False, critic_coeff=t.critic_coeff,
                       loss_critic_type=t.loss_critic_type)
    gae = GAE(gamma=t.gamma, lmbda=t.lmbda, value_network=critic, average_gae=True)
    optimizer = torch.optim.Adam(loss.parameters(), lr=t.lr)
    return SimpleNamespace(actor=actor, critic=critic, loss=loss, gae=gae, optimizer=optimizer,
                           max_grad_norm=t.max_grad_norm)


def torchrl_update(batch, base, args, generator, prof: "PhaseProfile | None" = None) -> float:
    """One learner update the plain TorchRL way: GAE, then epochs of shuffled minibatches.

    ``base`` is :func:`build_torchrl`'s result; ``prof`` (a :class:`PhaseProfile`) times the phases."""
    phase = prof.phase if prof is not None else (lambda name: contextlib.nullcontext())
    loss, optimizer = base.loss, base.optimizer
    with phase("value"), torch.no_grad():
        batch = base.gae(batch)
    flat = batch.reshape(-1)
    rows = flat.shape[0]
    mb = rows // args.minibatches
    params = list(loss.parameters())
    for _ in range(args.epochs):
        with phase("minibatch"):
            perm = torch.randperm(rows, generator=generator, device=generator.device)
        for i in range(args.minibatches):
            with phase("minibatch"):
                sub = flat[perm[i * mb:(i + 1) * mb]]
            with phase("loss_forward"):
                out = loss(sub)
            with phase("optimizer"):
                total = sum(v for k, v in out.items() if k.startswith("loss_"))
                optimizer.zero_grad(set_to_none=True)
            with phase("backward"):
                total.backward()
            with phase("optimizer"):
                torch.nn.utils.clip_grad_norm_(params, base.max_grad_norm)
                optimizer.step()
    return float(total.detach())  # the update is done when its result is on the host


# ---------------------------------------------------------------------------- per-phase profile
#: the profile's phases, in the order of an iteration (see the module docstring)
PHASES = ("collect", "value", "aggregate", "minibatch", "loss_forward", "backward", "analytic_kl", "optimizer",
          "normalizer", "post_steps_hooks", "logging", "other")


class PhaseProfile:
    """Exclusive wall-clock seconds per phase: a phase's nested phases are subtracted from it.

    Every timer mark synchronises CUDA (``torch.cuda.synchronize``) first, so kernels are charged
    to the phase that launched them; on CPU nothing is synchronised.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._stack: list[list] = []  # [name, start, seconds of nested phases]

    def _now(self) -> float:
        _sync(self.device)
        return time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str):
        self._stack.append([name, self._now(), 0.0])
        try:
            yield
        finally:
            name, start, nested = self._stack.pop()
            dt = self._now() - start
            self.seconds[name] += dt - nested
            if self._stack:
                self._stack[-1][2] += dt

    def wrap(self, fn, name: str):
        @functools.wraps(fn)
        def timed(*a, **k):
            with self.phase(name):
                return fn(*a, **k)
        return timed


class _TimedCollector:
    """Wraps a collector so that each ``next`` batch is timed as ``collect``; everything else is delegated."""

    def __init__(self, inner, prof: PhaseProfile):
        self._inner, self._prof = inner, prof

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __iter__(self):
        it = iter(self._inner)
        while True:
            with self._prof.phase("collect"):
                try:
                    batch = next(it)
                except StopIteration:
                    return
            yield batch


@contextlib.contextmanager
def instrument_trainer(trainer, prof: PhaseProfile):
    """Time the phases of ``trainer`` (an ``OnPolicyTrainer``) into ``prof`` while the block runs.

    Wraps bound methods of this trainer instance, its stepper and its loss module, and (process
    wide, restored on exit) ``torch.Tensor.backward`` and ``gaussian_kl`` (in ``on_policy`` and
    ``objectives.kl``). Library code
    is not changed. A method the trainer no longer calls simply times nothing: its time then
    lands in the enclosing phase."""
    from torchrl_sapg.trainers import on_policy

    undo = []

    def patch(obj, attr: str, name: str) -> None:
        if not hasattr(obj, attr):
            return
        own = attr in vars(obj)
        undo.append((obj, attr, own, vars(obj).get(attr)))
        setattr(obj, attr, prof.wrap(getattr(obj, attr), name))

    patch(trainer, "_estimate_values", "value")
    patch(trainer, "_process_batch_hook", "aggregate")  # the batch_process stage: SAPG/EPO's aggregate
    patch(trainer, "optim_steps", "minibatch")  # exclusive: shuffle, indexing, per-minibatch hooks
    patch(trainer.optimization_stepper, "step", "optimizer")  # exclusive: loss sum, zero_grad, clip, step, lr rule
    patch(trainer.loss_module, "forward", "loss_forward")
    patch(torch.Tensor, "backward", "backward")
    patch(on_policy, "gaussian_kl", "analytic_kl")  # the trainer's extra actor pass, where it makes one
    try:
        from torchrl_sapg.objectives import kl as kl_module
    except ImportError:  # older library: gaussian_kl lives in on_policy only
        kl_module = None
    if kl_module is not None:
        patch(kl_module, "gaussian_kl", "analytic_kl")
    learner = getattr(trainer, "learner", None)  # the in-process population's PopulationLearner (PBTTrainer)
    if learner is not None:
        patch(learner, "member_losses", "loss_forward")
        patch(learner.optimizer, "step", "optimizer")  # StackedAdam: clip, moments and the weight update
    patch(trainer, "_update_normalizers", "normalizer")
    patch(trainer, "_post_steps_hook", "post_steps_hooks")
    patch(trainer, "_metrics", "logging")
    patch(trainer, "_write_log", "logging")
    collector = trainer.collector
    trainer.collector = _TimedCollector(collector, prof)
    try:
        yield prof
    finally:
        trainer.collector = collector
        for obj, attr, own, old in reversed(undo):
            if own:
                setattr(obj, attr, old)
            else:
                delattr(obj, attr)


def summarize_profiles(profiles: list[dict]) -> dict:
    """Median seconds of each phase over the profiled iterations, the update (all but ``collect``)
    and every phase's share of that update."""
    med = {k: statistics.median(p[k] for p in profiles) for k in PHASES}
    update = sum(v for k, v in med.items() if k != "collect")
    return {"iterations": len(profiles), "seconds": med, "update_s": update, "iteration_s": update + med["collect"],
            "share_of_update": {k: (v / update if update > 0 else 0.0) for k, v in med.items() if k != "collect"},
            "seconds_all": profiles}


# ---------------------------------------------------------------------------- FLOP floor
def linear_layers(*modules: torch.nn.Module) -> list[tuple[int, int]]:
    """``(in_features, out_features)`` of every ``nn.Linear`` in ``modules`` (each counted once)."""
    seen, out = set(), []
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, torch.nn.Linear) and id(layer) not in seen:
                seen.add(id(layer))
                out.append((layer.in_features, layer.out_features))
    return out


def forward_flops_per_row(*modules: torch.nn.Module) -> int:
    """Matmul FLOPs of one row through ``modules``' linear layers: 2 x in x out per layer."""
    return sum(2 * i * o for i, o in linear_layers(*modules))


#: the FLOP count's parts: the profile phase a matmul ran in -> the part it is counted in
FLOP_PART_OF_PHASE = {"loss_forward": "train_forward_backward", "backward": "train_forward_backward",
                      "analytic_kl": "analytic_kl", "value": "value_estimation", "aggregate": "aggregate"}
FLOP_PARTS = ("train_forward_backward", "analytic_kl", "value_estimation", "aggregate", "other")


def flop_counter(prof: PhaseProfile, counts: dict):
    """A ``TorchDispatchMode`` adding the FLOPs of every matmul-like aten op that runs (``mm``,
    ``addmm``, ``bmm``..., with ``torch.utils.flop_counter``'s formulas: ``2 x m x k x n`` per
    matmul, backward included as the ops autograd really runs) to ``counts``, by the part of
    the update (:data:`FLOP_PART_OF_PHASE`) whose profile phase is open. Ops under ``vmap``
    (TorchRL's GAE) are seen with their physical shapes."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    aten = torch.ops.aten

    class _Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            count = flop_registry.get(func._overloadpacket)
            if count is not None:
                phase = prof._stack[-1][0] if prof._stack else "other"
                part = FLOP_PART_OF_PHASE.get(phase, "other")
                counts[part] = counts.get(part, 0) + int(count(*args, **kwargs, out_val=out))
                if phase == "loss_forward" and func._overloadpacket in (aten.mm, aten.addmm):
                    a, b = args[-2], args[-1]  # mm(a, b), addmm(bias, a, b)
                    shape = (a.shape[0], a.shape[1], b.shape[1])
                    if shape[0] * shape[1] * shape[2] > math.prod(counts.get("largest_forward_mm", (0, 0, 0))):
                        counts["largest_forward_mm"] = shape
            return out

    return _Counter()


def gemm_flops_per_s(rows: int, k: int, n: int, device: torch.device, seconds: float = 0.3) -> dict:
    """Practical FLOP/s of ``torch.mm([rows, k], [k, n])`` on ``device``: repeated for about
    ``seconds`` after a warm-up, best of 3 such runs."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(rows, k, generator=gen).to(device)
    b = torch.randn(k, n, generator=gen).to(device)
    flops = 2 * rows * k * n
    for _ in range(3):
        torch.mm(a, b)
    _sync(device)
    t0 = time.perf_counter()
    torch.mm(a, b)
    _sync(device)
    one = max(time.perf_counter() - t0, 1e-7)
    reps = max(3, int(seconds / 3 / one))
    best = float("inf")
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    return {"shape": [rows, k, n], "flops": flops, "seconds_per_mm": best, "flops_per_s": flops / best,
            "repeats": reps}


@torch.no_grad()
def rescore(batch, actor, log_prob_key):
    """``batch`` as if ``actor`` (one policy) had collected it: policy id 0, its own
    ``loc``/``scale`` and log-prob of the stored actions (PPO needs an on-policy batch)."""
    batch = batch.clone()
    for key in batch.keys(True, True):
        if (key if isinstance(key, str) else key[-1]) == "policy_id":
            batch.set(key, torch.zeros_like(batch.get(key)))
    td = batch.copy()
    dist = actor.get_dist(td)
    batch.set("loc", td.get("loc"))
    batch.set("scale", td.get("scale"))
    lp = batch.get(log_prob_key)
    batch.set(log_prob_key, dist.log_prob(batch.get("action")).reshape(lp.shape).to(lp.dtype))
    return batch


class ReplayCollector:
    """Feeds ``OnPolicyTrainer.train()`` clones of one stored batch and times each iteration.

    An iteration starts when its batch is handed over and ends when the trainer asks for the
    next one (the clone lies outside both marks); the caller closes the last one.
    """

    def __init__(self, device):
        self.batch, self.device = None, device
        self.starts: list[float] = []
        self.ends: list[float] = []

    def __iter__(self):
        while True:
            batch = self.batch.clone()
            _sync(self.device)
            self.starts.append(time.perf_counter())
            yield batch
            _sync(self.device)
            self.ends.append(time.perf_counter())


class Learner:
    """One variant's learner update on a cell's batch, ready to be timed (:meth:`update`)."""

    def __init__(self, variant: str, n: int, m: int, args, batch, agent_state, use_compile: bool, compile_backend="inductor"):
        self.variant, self.device, self.args = variant, torch.device(args.device), args
        self.frames = batch.numel()
        library_compile = False
        if variant == BASELINE:
            self.base = build_torchrl(args, self.device)
            self.loss = self.base.loss
            self.nets = (self.base.actor, self.base.critic)
            self.batch = rescore(batch, self.base.actor, self.loss.tensor_keys.sample_log_prob)
            self.generator = torch.Generator(device=self.device).manual_seed(0)
            self.rows = self.frames
        else:
            self.replay = ReplayCollector(self.device)
            single = RECIPE_ALGO[variant] == "ppo"
            # the library's switch where it exists (train.compile: loss forward, analytic KL, loss sum and their
            # backward), else the loss module's forward as for the baseline
            library_compile = use_compile and trainer_compiles()
            self.trainer, agent = build_ours(variant, n, m, args, collector=self.replay,
                                             agent_state=None if single else agent_state,
                                             compile_options={"backend": compile_backend} if library_compile else None)
            self.loss = self.trainer.loss_module
            self.nets = (agent.actor, agent.critic)
            self.replay.batch = rescore(batch, agent.actor, self.loss.tensor_keys.sample_log_prob) if single else batch
        self.compile_scope = None
        if library_compile:
            self.compile_scope = "update step (OnPolicyTrainer compile=)"
        elif use_compile:
            self.loss.forward = torch.compile(self.loss.forward, backend=compile_backend)
            self.compile_scope = "loss forward"

    def update(self) -> float:
        """Seconds of one learner update (ours: one iteration of ``OnPolicyTrainer.train()``)."""
        if self.variant == BASELINE:
            data = self.batch.clone()
            _sync(self.device)
            t0 = time.perf_counter()
            torchrl_update(data, self.base, self.args, self.generator)
            _sync(self.device)
            return time.perf_counter() - t0
        trainer, replay = self.trainer, self.replay
        replay.starts.clear()
        replay.ends.clear()
        trainer.total_frames = trainer.collected_frames + self.frames
        trainer.train()
        _sync(self.device)
        replay.ends.append(time.perf_counter())
        return replay.ends[0] - replay.starts[0]

    def rows_per_update(self) -> int:
        return self.rows if self.variant == BASELINE else self.trainer.batch_layout["rows"]

    def minibatch_rows(self) -> int:
        if self.variant == BASELINE:
            return self.rows // self.args.minibatches
        return self.trainer.batch_layout["minibatch_size"]

    def largest_matmul(self) -> tuple[int, int, int]:
        """``(minibatch_rows, in, out)`` of the layer with most weights: the fallback when the FLOP
        count saw no matmul in the loss forward (the count's largest forward matmul is used)."""
        i, o = max(linear_layers(*self.nets), key=lambda io: io[0] * io[1])
        return self.minibatch_rows(), i, o

    def flops(self) -> dict:
        """The matmul FLOPs of one extra (untimed, eager) update, counted as they run, by part."""
        prof, counts = PhaseProfile(self.device), {}
        with flop_counter(prof, counts):
            if self.variant == BASELINE:
                with prof.phase("other"):
                    torchrl_update(self.batch.clone(), self.base, self.args, self.generator, prof)
            else:
                trainer = self.trainer
                trainer.total_frames = trainer.collected_frames + self.frames
                with instrument_trainer(trainer, prof), prof.phase("other"):
                    trainer.train()
        parts = {k: int(counts.get(k, 0)) for k in FLOP_PARTS}
        parts["total"] = sum(parts.values())
        actor, critic = self.nets
        largest = counts.get("largest_forward_mm") or self.largest_matmul()
        return {"per_update": parts, "actor_forward_flops_per_row": forward_flops_per_row(actor),
                "critic_forward_flops_per_row": forward_flops_per_row(critic),
                "actor_layers": linear_layers(actor), "critic_layers": linear_layers(critic),
                "analytic_kl_pass": parts["analytic_kl"] > 0, "largest_matmul": [int(x) for x in largest]}

    def details(self) -> dict:
        scope = {"compile_scope": self.compile_scope} if self.compile_scope else {}
        if self.variant == BASELINE:
            return {"rows_per_update": self.rows, **scope}
        out = {"rows_per_update": self.trainer.batch_layout["rows"], "batch_layout": self.trainer.batch_layout, **scope}
        if self.variant == "epo":
            sched = self.trainer._modules["genetic_scheduler"]
            out.update(genetic_steps=sched.num_steps, genetic_decisions=sched.num_decisions)
        return out


# ---------------------------------------------------------------------------- measurements
def _first_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip()
    return next((line for line in text.splitlines() if line.strip()), type(err).__name__)[:300]


class _Deadline:
    """Raise ``TimeoutError`` in the main thread after ``seconds`` (SIGALRM; no-op without it)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def _fire(self, *_):
        raise TimeoutError(f"compile exceeded --compile-timeout={self.seconds:g}s")

    def __enter__(self):
        self.armed = hasattr(signal, "SIGALRM") and self.seconds > 0
        if self.armed:
            self.previous = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)


def _unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def time_cell(n: int, m: int, args, with_compile: bool) -> list[dict]:
    """Learner-update timings of every variant (eager, and compiled if asked) on one batch."""
    device = torch.device(args.device)
    trainer, agent = build_ours("sapg", n, m, args)  # the cell's M-policy actor collects the batch
    t0 = time.perf_counter()
    batch = next(iter(trainer.collector)).detach()
    _sync(device)
    collect_s = time.perf_counter() - t0
    trainer.collector.shutdown()
    state = {"actor": copy.deepcopy(agent.actor.state_dict()), "critic": copy.deepcopy(agent.critic.state_dict())}
    del trainer, agent
    if with_compile:  # four losses share tensordict's code objects: room for all their graphs
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    configs = [(v, c) for c in ((False, True) if with_compile else (False,)) for v in args.variants]
    rows, learners = {}, {}
    for v, c in configs:
        rows[v, c] = {"variant": v, "num_envs": n, "num_policies": m, "compile": c, "epochs": args.epochs,
                      "batch_collect_s": collect_s}
        learners[v, c] = Learner(v, n, m, args, batch, state, c, args.compile_backend)
    # warm-up, round-robin too: compiled graphs guard on tensordict's global class memo, which
    # grows while the other variants run their first updates (a recompile, not a timed one)
    budget = {key: args.compile_timeout for key in learners if key[1]}
    for key in learners:
        rows[key]["warmup_s"] = []
    for w in range(max(args.warmup, args.compile_warmup if with_compile else 0)):
        for key, learner in list(learners.items()):
            if w >= (max(args.warmup, args.compile_warmup) if key[1] else args.warmup):
                continue
            t0 = time.perf_counter()
            try:
                with _Deadline(budget[key] if key[1] else 0):
                    rows[key]["warmup_s"].append(learner.update())
            except Exception as err:  # noqa: BLE001 - a compile failure is a result
                if not key[1]:
                    raise
                timed_out = isinstance(err, TimeoutError) or time.perf_counter() - t0 >= budget[key]
                rows[key].update(status="timeout" if timed_out else "unsupported", error=_first_line(err))
                del learners[key]
                continue
            if key[1]:
                budget[key] = max(1e-3, budget[key] - (time.perf_counter() - t0))
    graphs_before = _unique_graphs()
    for key in learners:
        rows[key]["update_s_all"] = []
    for _ in range(args.repeats):  # round-robin: load changes hit every variant alike
        for key, learner in learners.items():
            rows[key]["update_s_all"].append(learner.update())
    for key, learner in learners.items():
        r = rows[key]
        r.update(learner.details())
        med = statistics.median(r["update_s_all"])
        r.update(status="ok", update_s=med, samples_per_s=r["rows_per_update"] * args.epochs / med,
                 env_frames_per_s=learner.frames / med)
    # the FLOP floor: the update's FLOPs per second against a same-run GEMM of its largest matmul
    # (counted on one extra eager update per variant, after the timed rounds; a compiled row has its eager twin's)
    gemms: dict[tuple, dict] = {}
    counted = {v: learner.flops() for (v, c), learner in learners.items() if not c}
    for key, learner in learners.items():
        shape = tuple(counted[key[0]]["largest_matmul"])
        if shape not in gemms:
            gemms[shape] = gemm_flops_per_s(*shape, device=device, seconds=args.gemm_seconds)
        flops, gemm, r = counted[key[0]], gemms[shape], rows[key]
        achieved = flops["per_update"]["total"] / r["update_s"]
        r.update(flops=flops, flops_per_update=flops["per_update"]["total"], achieved_flops_per_s=achieved,
                 gemm=gemm, gemm_flops_per_s=gemm["flops_per_s"], flop_floor_ratio=achieved / gemm["flops_per_s"],
                 floor_update_s=flops["per_update"]["total"] / gemm["flops_per_s"])
    if with_compile:
        from torch._dynamo.utils import counters

        for key in learners:
            if key[1]:  # process-wide counts (all compiled variants together)
                rows[key].update(graph_breaks_all_variants=int(sum(counters["graph_break"].values())),
                                 unique_graphs_all_variants=_unique_graphs(),
                                 graphs_compiled_while_timed=_unique_graphs() - graphs_before)
    learners.clear()
    return list(rows.values())


def _rss_now() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return _rss_peak()


def _rss_peak() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class EndToEnd:
    """One variant's collection + update, one iteration per :meth:`step` (ours: one iteration of
    ``OnPolicyTrainer.train()`` with the recipe's ``PopulationCollector``; the baseline: TorchRL's
    ``Collector`` and the plain loop). :meth:`profile_step` is the same iteration with the
    per-phase timers on."""

    def __init__(self, variant: str, n: int, m: int, args):
        self.variant, self.device, self.args = variant, torch.device(args.device), args
        self.frames = n * args.horizon
        if variant == BASELINE:
            from torchrl.collectors import Collector

            from torchrl_sapg.envs import make_env

            self.base = build_torchrl(args, self.device)
            env = make_env("pendulum", n, device=self.device, seed=0, max_episode_steps=args.horizon)
            self.collector = Collector(env, self.base.actor, frames_per_batch=self.frames,
                                       auto_register_policy_transforms=False)
            self.iterator = iter(self.collector)
            self.generator = torch.Generator(device=self.device).manual_seed(0)
        else:
            self.trainer, _ = build_ours(variant, n, m, args)
            self.collector = self.trainer.collector

    def _iteration(self, prof: PhaseProfile | None = None) -> None:
        if self.variant == BASELINE:
            with prof.phase("collect") if prof is not None else contextlib.nullcontext():
                batch = next(self.iterator)
            torchrl_update(batch, self.base, self.args, self.generator, prof)
        else:
            self.trainer.total_frames = self.trainer.collected_frames + self.frames
            self.trainer.train()

    def step(self) -> float:
        _sync(self.device)
        t0 = time.perf_counter()
        self._iteration()
        _sync(self.device)
        return time.perf_counter() - t0

    def profile_step(self) -> dict:
        """Exclusive seconds per phase (:data:`PHASES`) of one iteration."""
        prof = PhaseProfile(self.device)
        scope = instrument_trainer(self.trainer, prof) if self.variant != BASELINE else contextlib.nullcontext()
        with scope, prof.phase("other"):
            self._iteration(prof)
        return dict(prof.seconds)

    def close(self) -> None:
        self.collector.shutdown()


def time_e2e(n: int, m: int, args, rows: list[dict]) -> None:
    """End-to-end frames/s of every eager variant: one warm-up iteration each, then
    ``e2e_iters`` round-robin rounds (median reported), then ``profile_iters`` round-robin
    profiled iterations (``--profile``); written into ``rows``."""
    runners = {r["variant"]: EndToEnd(r["variant"], n, m, args) for r in rows if not r["compile"]}
    times = {v: [] for v in runners}
    for rnd in range(args.e2e_iters + 1):
        for v, runner in runners.items():
            seconds = runner.step()
            if rnd:
                times[v].append(seconds)
    profiles = {v: [] for v in runners}
    for _ in range(args.profile_iters if args.profile else 0):
        for v, runner in runners.items():
            profiles[v].append(runner.profile_step())
    for r in rows:
        v = r["variant"]
        if v not in runners or r["compile"]:
            continue
        if times[v]:
            t = statistics.median(times[v])
            r.update(e2e_s=t, e2e_s_all=times[v], e2e_frames_per_s=runners[v].frames / t)
        if profiles[v]:
            r["profile"] = summarize_profiles(profiles[v])
    for runner in runners.values():
        runner.close()


def measure_memory(variant: str, n: int, m: int, args) -> dict:
    """Peak memory of two end-to-end iterations (the second holds the previous batch while it
    collects) in a fresh process: CPU peak RSS and its increase, or CUDA max_memory_allocated."""
    device = torch.device(args.device)
    runner = EndToEnd(variant, n, m, args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _rss_now()
    for _ in range(2):
        runner.step()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _rss_peak()
    runner.close()
    return {"memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process RSS",
            "train_memory_increase_bytes": max(0, peak - base), "peak_memory_bytes": peak}


# ---------------------------------------------------------------------------- orchestration
def worker(job: dict, args) -> object:
    if job["kind"] == "time":
        rows = time_cell(job["num_envs"], job["num_policies"], args, job["compile"])
        if args.e2e_iters > 0 or (args.profile and args.profile_iters > 0):
            time_e2e(job["num_envs"], job["num_policies"], args, rows)
        return rows
    return measure_memory(job["variant"], job["num_envs"], job["num_policies"], args)


def run_job(job: dict, args, argv: list[str]):
    """Run :func:`worker` in a fresh subprocess (its own memory high-water mark) or in-process."""
    if args.in_process:
        return worker(job, copy.copy(args))
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--epochs", str(args.epochs), "--worker", json.dumps(job)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode:
        raise RuntimeError(f"worker {job} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def paired_round_ratios(row: dict, reference: dict) -> dict:
    """``row``'s update time over ``reference``'s, round by round (both timed in the same round-robin
    round, so a change in the machine's speed between rounds cancels), with their median, IQM and the
    IQM's 95% bootstrap interval over rounds."""
    ratios = [a / b for a, b in zip(row["update_s_all"], reference["update_s_all"], strict=True)]
    return {"per_round": ratios, **ratio_summary(ratios)}


def add_ratios(rows: list[dict]) -> dict:
    """Ratios of every figure to the eager ``torchrl`` baseline of the same cell; overheads vs PPO."""
    eager = {r["variant"]: r for r in rows if not r["compile"] and r.get("status") == "ok"}
    base = eager[BASELINE]
    for r in rows:
        if r.get("status") != "ok":
            continue
        r["update_time_vs_torchrl"] = r["update_s"] / base["update_s"]
        r["samples_per_s_vs_torchrl"] = r["samples_per_s"] / base["samples_per_s"]
        r["env_frames_per_s_vs_torchrl"] = r["env_frames_per_s"] / base["env_frames_per_s"]
        if "e2e_frames_per_s" in r:
            r["e2e_frames_per_s_vs_torchrl"] = r["e2e_frames_per_s"] / base["e2e_frames_per_s"]
            r["e2e_time_vs_torchrl"] = r["e2e_s"] / base["e2e_s"]
        if "peak_memory_bytes" in r:
            r["peak_memory_vs_torchrl"] = r["peak_memory_bytes"] / base["peak_memory_bytes"]
            r["train_memory_increase_vs_torchrl"] = (r["train_memory_increase_bytes"]
                                                    / max(1, base["train_memory_increase_bytes"]))
        if r["compile"] and r["variant"] in eager:
            r["compile_speedup"] = eager[r["variant"]]["update_s"] / r["update_s"]
    over = {}
    if "ppo" in eager:
        over["ppo_over_torchrl_update_time"] = eager["ppo"]["update_s"] / base["update_s"]
        over["ppo_over_torchrl_update_time_paired"] = paired_round_ratios(eager["ppo"], base)
        if "e2e_frames_per_s" in eager["ppo"]:
            over["ppo_over_torchrl_e2e_time"] = base["e2e_frames_per_s"] / eager["ppo"]["e2e_frames_per_s"]
        for v in eager:
            if v in (BASELINE, "ppo"):
                continue
            over[f"{v}_over_ppo_update_time"] = eager[v]["update_s"] / eager["ppo"]["update_s"]
            over[f"{v}_over_ppo_update_time_paired"] = paired_round_ratios(eager[v], eager["ppo"])
            # SAPG/EPO train on the leader's off-policy rows too: the row ratio is the floor of the time ratio
            over[f"{v}_over_ppo_rows"] = eager[v]["rows_per_update"] / eager["ppo"]["rows_per_update"]
            over[f"{v}_over_ppo_time_per_row"] = over[f"{v}_over_ppo_update_time"] / over[f"{v}_over_ppo_rows"]
            if "e2e_frames_per_s" in eager[v]:
                over[f"{v}_over_ppo_e2e_time"] = eager["ppo"]["e2e_frames_per_s"] / eager[v]["e2e_frames_per_s"]
    # where the extra time goes, phase by phase (profiled iterations): ppo - torchrl, and each variant - ppo
    excess = {}
    for v, r in eager.items():
        ref = BASELINE if v == "ppo" else "ppo"
        if v == BASELINE or "profile" not in r or "profile" not in eager.get(ref, {}):
            continue
        a, b = r["profile"], eager[ref]["profile"]
        excess[v] = {"reference": ref, "update_s": a["update_s"] - b["update_s"],
                     "seconds": {k: a["seconds"][k] - b["seconds"][k] for k in PHASES}}
    if excess:
        over["profile_excess_s"] = excess
    return over


#: the profile table's columns: (header, phases summed into it)
PROFILE_COLUMNS = (
    ("value (GAE)", ("value",)), ("aggregate", ("aggregate",)), ("minibatch", ("minibatch",)),
    ("loss fwd", ("loss_forward",)), ("backward", ("backward",)), ("analytic KL", ("analytic_kl",)),
    ("optimizer", ("optimizer",)), ("hooks, log, norm, other", ("normalizer", "post_steps_hooks", "logging", "other")),
)


def profile_markdown(cell: dict) -> list[str]:
    """One cell's profile table (seconds and share of the update) and its excess-time table."""
    rows = [r for r in cell["results"] if r.get("profile")]
    if not rows:
        return []
    iters = rows[0]["profile"]["iterations"]
    lines = [f"Per-phase profile, N={cell['num_envs']}, M={cell['num_policies']}, {cell['epochs']} epochs: median "
             f"seconds of {iters} profiled end-to-end iteration(s) (share of the update = everything but collect)", "",
             "| variant | collect s | " + " | ".join(h for h, _ in PROFILE_COLUMNS) + " | update s |",
             "|---|---:|" + "---:|" * len(PROFILE_COLUMNS) + "---:|"]
    for r in rows:
        p = r["profile"]
        cols = []
        for _, phases in PROFILE_COLUMNS:
            sec = sum(p["seconds"][k] for k in phases)
            cols.append(f"{sec:.3f} ({100 * sec / p['update_s']:.0f}%)" if p["update_s"] else f"{sec:.3f}")
        lines.append(f"| {r['variant']} | {p['seconds']['collect']:.3f} | " + " | ".join(cols) + f" | {p['update_s']:.3f} |")
    excess = cell["overheads"].get("profile_excess_s")
    if excess:
        lines += ["", "Excess seconds over the reference, by phase (> 0: slower than the reference):", "",
                  "| variant | vs | collect | " + " | ".join(h for h, _ in PROFILE_COLUMNS) + " | update |",
                  "|---|---|---:|" + "---:|" * len(PROFILE_COLUMNS) + "---:|"]
        for v, e in excess.items():
            cols = [f"{sum(e['seconds'][k] for k in phases):+.3f}" for _, phases in PROFILE_COLUMNS]
            lines.append(f"| {v} | {e['reference']} | {e['seconds']['collect']:+.3f} | " + " | ".join(cols)
                         + f" | {e['update_s']:+.3f} |")
    return lines


def floor_markdown(cells: list[dict]) -> list[str]:
    """The FLOP-floor table: the update's FLOPs, achieved FLOP/s, the same-run GEMM's and their ratio."""
    lines = ["| N | M | variant | compile | update GFLOP | achieved GFLOP/s | GEMM shape | GEMM GFLOP/s | "
             "achieved / GEMM | floor s | update s |", "|---:|---:|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for cell in cells:
        for r in cell["results"]:
            if r.get("status") != "ok" or "flop_floor_ratio" not in r:
                continue
            shape = "x".join(map(str, r["gemm"]["shape"]))
            lines.append(
                f"| {r['num_envs']} | {r['num_policies']} | {r['variant']} | {'yes' if r['compile'] else 'no'} | "
                f"{r['flops_per_update'] / 1e9:,.1f} | {r['achieved_flops_per_s'] / 1e9:,.1f} | {shape} | "
                f"{r['gemm_flops_per_s'] / 1e9:,.1f} | {r['flop_floor_ratio']:.3f} | {r['floor_update_s']:.3f} | "
                f"{r['update_s']:.3f} |")
    return lines


def paired_markdown(cells: list[dict]) -> list[str]:
    """The update-time ratios round by round: IQM [95% bootstrap interval] over the timed rounds."""
    def f(stats):
        if stats is None:
            return "-"
        low, high = stats["iqm_ratio_ci"]
        return f"{stats['iqm_ratio']:.3f} [{low:.3f}, {high:.3f}]"

    rounds = max((len(r.get("update_s_all", ())) for c in cells for r in c["results"]), default=0)
    lines = [f"Update time, paired by round ({rounds} round-robin rounds): IQM of the per-round ratios "
             "[95% bootstrap interval]", "",
             "| N | M | PPO / torchrl | SAPG / PPO | EPO / PPO |", "|---:|---:|---:|---:|---:|"]
    for cell in cells:
        o = cell["overheads"]
        lines.append(f"| {cell['num_envs']} | {cell['num_policies']} | {f(o.get('ppo_over_torchrl_update_time_paired'))} | "
                     f"{f(o.get('sapg_over_ppo_update_time_paired'))} | {f(o.get('epo_over_ppo_update_time_paired'))} |")
    return lines


def markdown(cells: list[dict]) -> str:
    """The per-variant table, the overhead table, the FLOP-floor table and each cell's profile."""
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    lines = [
        "| N | M | epochs | variant | compile | update s | x torchrl | samples/s | x torchrl | "
        "e2e frames/s | x torchrl | peak MiB | train +MiB |",
        "|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in cells:
        for r in cell["results"]:
            head = (f"| {r['num_envs']} | {r['num_policies']} | {r['epochs']} | {r['variant']} | "
                    f"{'yes' if r['compile'] else 'no'} |")
            if r.get("status") != "ok":
                lines.append(f"{head} {r.get('status')}: {r.get('error', '')[:100]} | | | | | | | |")
                continue
            mib = {k: (r[k] / 2**20 if k in r else None) for k in ("peak_memory_bytes", "train_memory_increase_bytes")}
            lines.append(
                f"{head} {r['update_s']:.3f} | {r['update_time_vs_torchrl']:.2f} | {r['samples_per_s']:,.0f} | "
                f"{r['samples_per_s_vs_torchrl']:.2f} | {f(r.get('e2e_frames_per_s'), ',.0f')} | "
                f"{f(r.get('e2e_frames_per_s_vs_torchrl'), '.2f')} | {f(mib['peak_memory_bytes'], '.0f')} | "
                f"{f(mib['train_memory_increase_bytes'], '.0f')} |"
            )
    lines += ["", "| N | M | PPO / torchrl update time | SAPG / PPO update time | EPO / PPO update time | "
                  "SAPG / PPO rows | SAPG / PPO time per row | SAPG / PPO e2e time | EPO / PPO e2e time |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for cell in cells:
        o = cell["overheads"]
        lines.append(
            f"| {cell['num_envs']} | {cell['num_policies']} | {f(o.get('ppo_over_torchrl_update_time'), '.2f')} | "
            f"{f(o.get('sapg_over_ppo_update_time'), '.2f')} | {f(o.get('epo_over_ppo_update_time'), '.2f')} | "
            f"{f(o.get('sapg_over_ppo_rows'), '.3f')} | {f(o.get('sapg_over_ppo_time_per_row'), '.2f')} | "
            f"{f(o.get('sapg_over_ppo_e2e_time'), '.2f')} | {f(o.get('epo_over_ppo_e2e_time'), '.2f')} |"
        )
    lines += ["", *paired_markdown(cells)]
    floor = floor_markdown(cells)
    if len(floor) > 2:
        lines += ["", *floor]
    for cell in cells:
        prof = profile_markdown(cell)
        if prof:
            lines += ["", *prof]
    return "\n".join(lines)


def _git_state() -> dict:
    """The commit measured, and whether library / recipe / benchmark files differed from it."""
    def git(*a):
        return subprocess.run(["git", *a], capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--", "torchrl_sapg", "recipes", "benchmarks/throughput.py")
        return {"git_commit": git("rev-parse", "HEAD"), "git_uncommitted_changes": bool(dirty)}
    except (OSError, subprocess.CalledProcessError):  # no git (e.g. a copied tree on a device machine)
        return {"git_commit": None, "git_uncommitted_changes": None}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-envs", type=int, nargs="+", default=[4096, 16384], help="N (rounded to a multiple of M)")
    p.add_argument("--num-policies", type=int, nargs="+", default=[6, 64], help="M of SAPG / EPO")
    p.add_argument("--horizon", type=int, default=16, help="T")
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 128, 64])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--epochs-for", nargs="*", default=[], metavar="N:EPOCHS",
                   help="other epochs for some requested N, e.g. 16384:2 (recorded per cell)")
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1, help="untimed learner updates per variant first")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds over the variants (median reported)")
    p.add_argument("--e2e-iters", type=int, default=2, help="timed end-to-end rounds after a warm-up one (0: skip)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="peak memory of each eager variant, one subprocess each")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS + EXTRA_VARIANTS,
                   help="torchrl is always included; opt-in: ppo_nokl (our PPO without the per-minibatch "
                        "analytic KL, fixed learning rate), sapg_td0 (SAPG with one-step off-policy targets)")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                   help="per-phase profile: --profile-iters instrumented end-to-end iterations per eager variant")
    p.add_argument("--profile-iters", type=int, default=2, help="profiled iterations per variant (median reported)")
    p.add_argument("--gemm-seconds", type=float, default=0.3, help="seconds of the FLOP-floor GEMM timing per shape")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="also time torch.compile'd losses")
    p.add_argument("--compile-num-envs", type=int, nargs="*", default=None,
                   help="requested N at which to time compiled losses (default: every N)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend (device_check.sh --dry-run uses eager: dynamo only, fast)")
    p.add_argument("--compile-warmup", type=int, default=2, help="warm-up updates of a compiled loss")
    p.add_argument("--compile-timeout", type=float, default=600, help="seconds for a compiled loss's warm-up")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (and the workers' OMP_NUM_THREADS)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="CPU: glibc keeps freed memory for the next large tensor, in every variant "
                        "(torchrl_sapg.runtime.keep_freed_host_memory; the recipe's keep_freed_memory default)")
    p.add_argument("--in-process", action="store_true", help="no subprocesses (memory figures then accumulate)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: N=32, M=4, T=4, small net, in-process, no compile")
    p.add_argument("--out", default=None)
    p.add_argument("--note", default=None, help="free text stored in the JSON")
    p.add_argument("--population-override", nargs="*", default=[], metavar="KEY=VALUE",
                   help="Hydra overrides for the SAPG / EPO recipes only, e.g. algo.off_policy_ratio=0.5")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.num_envs, args.num_policies, args.horizon, args.hidden = [32], [4], 4, [32, 32]
        args.epochs, args.minibatches, args.warmup, args.repeats, args.e2e_iters = 1, 2, 1, 1, 1
        args.compile, args.in_process, args.profile_iters, args.gemm_seconds = False, True, 1, 0.02
    if BASELINE not in args.variants:
        args.variants = [BASELINE, *args.variants]  # every ratio needs it
    args.epochs_for = {int(k): int(v) for k, v in (s.split(":") for s in args.epochs_for)}
    return args


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory and torch.device(args.device).type == "cpu":
        keep_freed_host_memory()  # the recipe's default; every variant, the TorchRL baseline included
    if args.worker is not None:
        try:
            print(json.dumps(worker(json.loads(args.worker), args)))
        except Exception:
            traceback.print_exc()
            raise
        return {}
    import torchrl

    device = torch.device(args.device)
    start = time.perf_counter()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    cells = []
    for n0 in args.num_envs:
        for m in args.num_policies:
            n = nearest_multiple(n0, m)
            if n != n0:
                print(f"N={n0} is not a multiple of M={m}: using N={n}", flush=True)
            cargs = copy.copy(args)
            cargs.epochs = args.epochs_for.get(n0, args.epochs)
            with_compile = args.compile and (args.compile_num_envs is None or n0 in args.compile_num_envs)
            t0 = time.perf_counter()
            rows = run_job({"kind": "time", "num_envs": n, "num_policies": m, "compile": with_compile}, cargs, argv)
            for r in rows:
                msg = (f"update {r['update_s']:.3f} s, {r['samples_per_s']:,.0f} samples/s, "
                       f"{r['achieved_flops_per_s'] / 1e9:,.2f} GFLOP/s = {r['flop_floor_ratio']:.3f} x GEMM"
                       if r.get("status") == "ok" else f"{r.get('status')}: {r.get('error')}")
                print(f"[N={n} M={m} epochs={cargs.epochs}] {r['variant']:<8} compile={r['compile']!s:<5} {msg}", flush=True)
            for r in rows:
                if "e2e_frames_per_s" in r:
                    print(f"[N={n} M={m}] {r['variant']:<8} e2e {r['e2e_frames_per_s']:,.0f} frames/s", flush=True)
            print(f"[N={n} M={m}] learner updates and end to end timed in {time.perf_counter() - t0:.0f} s", flush=True)
            if args.memory:
                for r in rows:
                    if r["compile"]:
                        continue
                    t0 = time.perf_counter()
                    r.update(run_job({"kind": "memory", "variant": r["variant"], "num_envs": n, "num_policies": m},
                                     cargs, argv))
                    print(f"[N={n} M={m}] {r['variant']:<8} peak {r['peak_memory_bytes'] / 2**20:,.0f} MiB, training "
                          f"+{r['train_memory_increase_bytes'] / 2**20:,.0f} MiB ({time.perf_counter() - t0:.0f} s)", flush=True)
            cells.append({"num_envs": n, "num_envs_requested": n0, "num_policies": m, "epochs": cargs.epochs,
                          "compile_timed": with_compile, "results": rows, "overheads": add_ratios(rows)})
    table = markdown(cells)
    print(table)
    wall = time.perf_counter() - start
    out = {
        "benchmark": "learner-update and end-to-end throughput vs TorchRL's ClipPPOLoss loop (benchmarks/throughput.py)",
        "command": shlex.join(["python", "benchmarks/throughput.py", *argv]),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(device), "device_name": _device_name(device), "cpu_model": _device_name(torch.device("cpu")),
        "cpu_count": os.cpu_count(), "torch_num_threads": torch.get_num_threads(),
        "torch_version": torch.__version__, "torchrl_version": torchrl.__version__,
        "python_version": platform.python_version(), "wall_seconds": wall, "note": args.note, **_git_state(),
        "load_average_start": load_start, "load_average_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "config": {k: v for k, v in vars(args).items() if k != "worker"},
        "definitions": {
            "update_s": "median seconds of one learner update (value estimation, aggregation, epochs x minibatches; "
                        "ours: one OnPolicyTrainer.train() iteration on the stored batch)",
            "samples_per_s": "training-batch rows x epochs / update_s (SAPG/EPO rows include the leader's off-policy rows)",
            "env_frames_per_s": "N x T / update_s",
            "e2e_frames_per_s": "N x T / e2e_s; e2e_s: median seconds of one collection + update iteration "
                                "(variants round-robin, after a warm-up iteration each)",
            "peak_memory_bytes": "own process per variant, two end-to-end iterations: peak RSS (CPU) or "
                                 "cuda max_memory_allocated",
            "train_memory_increase_bytes": "that peak minus the memory just before the two iterations",
            "*_vs_torchrl": "the figure / the same figure of the cell's eager torchrl baseline",
            "*_over_ppo_*_time": "time ratio to our eager PPO of the cell (> 1: slower)",
            "*_over_ppo_rows": "training-batch rows per update / PPO's (SAPG/EPO: 1 + off_policy_ratio / M, the "
                               "floor of the update-time ratio for a row-bound update)",
            "*_over_ppo_time_per_row": "*_over_ppo_update_time / *_over_ppo_rows: the cost of one trained row vs PPO's",
            "*_update_time_paired": "the same update-time ratio round by round (both timed in one round-robin round): "
                                    "per_round, their median, IQM and the IQM's 95% bootstrap interval over rounds",
            "profile": "profiled end-to-end iterations (after the timed ones): median exclusive wall-clock seconds "
                       "per phase (" + ", ".join(PHASES) + "); update_s = all phases but collect; share_of_update = "
                       "phase / update_s; CUDA synchronised at every timer",
            "profile_excess_s": "(in overheads) profile seconds minus the reference's, per phase: ppo vs torchrl, "
                                "every other variant vs ppo",
            "flops_per_update": "matmul FLOPs of one update (aten mm/addmm/bmm..., 2 x m x k x n, forward and the "
                                "backward autograd runs), counted by a TorchDispatchMode during one extra eager "
                                "update; flops.per_update splits them by the phase they ran in "
                                "(train_forward_backward, analytic_kl, value_estimation, aggregate, other)",
            "achieved_flops_per_s": "flops_per_update / update_s",
            "gemm_flops_per_s": "same worker, torch.mm of the update's largest matmul [minibatch rows, in] x [in, out] "
                                "(the largest forward matmul of the loss the FLOP count saw), repeated, best of 3",
            "flop_floor_ratio": "achieved_flops_per_s / gemm_flops_per_s (1.0: every FLOP at the GEMM's rate)",
            "floor_update_s": "flops_per_update / gemm_flops_per_s: the update's time at the GEMM's rate",
        },
        "cells": cells,
        "table_markdown": table,
    }
    path = Path(args.out or ROOT / "benchmarks" / "results" / f"throughput_{device.type}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path} ({wall:.0f} s)")
    return out


if __name__ == "__main__":
    main()
