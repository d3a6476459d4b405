"""Build the parts of a run from its Hydra config; shared by train.py, evaluate.py and benchmarks/.

Config keys are constructor arguments: a group's entries reach a constructor by name
(:func:`config_kwargs`), so a key the constructor does not take is not passed and an option the
config leaves out takes the library's default.

Everything that depends on the algorithm comes from one table, :data:`ALGORITHMS`, looked up
once by :func:`algorithm`: the networks, the trainer (with its loss and hooks), and whether the
run is an in-process population (``pbt=inprocess``, :func:`pbt_mode`). A new algorithm is one
:class:`Algorithm` entry plus its ``recipes/conf/algo/<name>.yaml``.
"""
from __future__ import annotations

import inspect
import random
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torchrl.envs import TransformedEnv
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from torchrl_sapg.envs import make_env
from torchrl_sapg.modules import ActorCritic, make_actor_critic
from torchrl_sapg.modules.recurrent import add_recurrent_transforms, collection_policy, make_recurrent_actor_critic
from torchrl_sapg.objectives import OffPolicyClipPPOLoss, SAPGLoss
from torchrl_sapg.population import (
    EnsembleActor,
    GeneticLatentScheduler,
    InProcessPBT,
    PBTMember,
    PBTTrainer,
    PolicyEnsemble,
    PopulationLearner,
    RecurrentEnsembleActor,
    RecurrentEnsembleValue,
    RecurrentPolicyEnsemble,
    ensemble_collection_policy,
)
from torchrl_sapg.population.pbt_inprocess import HYPERPARAMETERS
from torchrl_sapg.trainers import LearningRateSchedule, OnPolicyTrainer


# ----------------------------------------------------------------------------- config -> arguments
def config_kwargs(fn: Callable, *groups: Mapping | None, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The entries of ``groups`` that are named parameters of ``fn`` (a later group wins).

    Args:
        fn: the constructor (or function) the entries are for.
        groups: config groups (``DictConfig`` or dicts); ``None`` is skipped.
        only: pass only these config keys (for constructors that take more than the recipe sets).

    ``*_frames`` values are cast to ``int`` (Hydra reads ``2e5`` as a float).
    """
    params = inspect.signature(fn).parameters
    out: dict[str, Any] = {}
    for group in groups:
        if group is None:
            continue
        items = OmegaConf.to_container(group, resolve=True) if isinstance(group, DictConfig) else dict(group)
        for key, value in items.items():
            if (only is None or key in only) and key in params and params[key].kind is not inspect.Parameter.VAR_KEYWORD:
                out[key] = int(float(value)) if key.endswith("_frames") and value is not None else value
    return out


# ----------------------------------------------------------------------------- env
def build_env(cfg: DictConfig, num_envs: int | None = None, seed: int | None = None):
    return make_env(
        cfg.env.name,
        num_envs or cfg.env.num_envs,
        device=cfg.device,
        seed=cfg.seed if seed is None else seed,
        **dict(cfg.env.get("kwargs") or {}),
    )


def is_recurrent_config(cfg: DictConfig) -> bool:
    """``model.lstm_hidden > 0``: a recurrent (MLP + LSTM) actor-critic trained on whole env-rows
    (for ``pbt=inprocess``: every member of the in-process population)."""
    return int(cfg.model.get("lstm_hidden", 0) or 0) > 0


def add_recurrent_env_transforms(cfg: DictConfig, env, agent: ActorCritic):
    """``InitTracker`` and the LSTM hidden-state primers: the single network's, or the population's."""
    if not algorithm(cfg).population:
        return add_recurrent_transforms(env, agent)
    for t in agent.actor.ensemble.env_transforms():
        env = env.append_transform(t) if isinstance(env, TransformedEnv) else TransformedEnv(env, t)
    return env


def build_collection_policy(cfg: DictConfig, agent: ActorCritic):
    """The collector's policy: the actor, or actor then critic for recurrent nets (both hidden states recorded)."""
    if not is_recurrent_config(cfg):
        return agent.actor
    if algorithm(cfg).population:
        return ensemble_collection_policy(agent.actor, agent.critic)
    return collection_policy(agent)


# ----------------------------------------------------------------------------- networks
def _model_kwargs(cfg: DictConfig, fn: Callable) -> dict[str, Any]:
    """``model.*`` plus the population layout (``algo.num_policies``, ``latent_dim``, ...) by name."""
    return {**config_kwargs(fn, cfg.algo, cfg.model), "device": cfg.device}


def _latent_agent(cfg: DictConfig, env) -> ActorCritic:
    """One latent-conditioned backbone for ``algo.num_policies`` policies (PPO: one policy, no latent)."""
    obs_dim, act_dim = env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1]
    critic_key = "critic_observation" if "critic_observation" in env.observation_spec.keys() else None
    if is_recurrent_config(cfg):
        if critic_key is not None:
            raise ValueError("model.lstm_hidden > 0 does not support an asymmetric critic (critic_observation) yet.")
        return make_recurrent_actor_critic(obs_dim, act_dim, **_model_kwargs(cfg, make_recurrent_actor_critic))
    return make_actor_critic(
        obs_dim,
        act_dim,
        critic_observation_key=critic_key,
        critic_observation_dim=env.observation_spec[critic_key].shape[-1] if critic_key else None,
        **_model_kwargs(cfg, make_actor_critic),
    )


def _population_agent(cfg: DictConfig, env) -> ActorCritic:
    """``algo.num_policies`` independent networks evaluated together (in-process PBT)."""
    obs_dim, act_dim = env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1]
    if is_recurrent_config(cfg):  # every member MLP -> LSTM, hidden states per env row
        kwargs = _model_kwargs(cfg, RecurrentPolicyEnsemble)
        ensemble = RecurrentPolicyEnsemble(obs_dim, act_dim, num_members=cfg.algo.num_policies, **kwargs)
        return ActorCritic(RecurrentEnsembleActor(ensemble), RecurrentEnsembleValue(ensemble), None, None)
    ensemble = PolicyEnsemble(obs_dim, act_dim, num_members=cfg.algo.num_policies, **_model_kwargs(cfg, PolicyEnsemble))
    return ActorCritic(EnsembleActor(ensemble), None, None, None)


# ----------------------------------------------------------------------------- losses
def _check_normalize_advantage(cfg: DictConfig) -> None:
    if cfg.train.normalize_advantage not in ("batch", "minibatch", "none"):
        raise ValueError(f"train.normalize_advantage={cfg.train.normalize_advantage!r}: choose batch, minibatch or none.")


def _ppo_loss(cfg: DictConfig, agent: ActorCritic) -> tuple[Any, bool]:
    """TorchRL's ClipPPOLoss on on-policy data (tests/torchrl_conformance), plus the analytic KL from
    its own forward pass. Returns the loss and whether GAE standardises advantages over the batch."""
    t = cfg.train
    loss = OffPolicyClipPPOLoss(
        agent.actor,
        agent.critic,
        entropy_bonus=t.entropy_coeff > 0,
        normalize_advantage=t.normalize_advantage == "minibatch",
        **config_kwargs(ClipPPOLoss, t, only=("clip_epsilon", "entropy_coeff", "critic_coeff", "loss_critic_type", "clip_value")),
    )
    return loss, t.normalize_advantage == "batch"


def _sapg_loss(cfg: DictConfig, agent: ActorCritic) -> tuple[Any, bool]:
    """SAPGLoss from ``algo.*`` and the shared PPO keys of ``train.*``, by name; its ``aggregate``
    standardises over the aggregated batch (on- and off-policy rows), so GAE does not."""
    kwargs = config_kwargs(SAPGLoss, cfg.train, cfg.algo)
    if kwargs.get("advantage_normalization") is None:  # null: follow train.normalize_advantage
        kwargs["advantage_normalization"] = cfg.train.normalize_advantage
    return SAPGLoss(agent.actor, agent.critic, generator=torch.Generator().manual_seed(cfg.seed), **kwargs), False


def build_loss(cfg: DictConfig, agent: ActorCritic):
    """The algorithm's loss module and its value estimator (TorchRL's GAE with ``train.gamma`` / ``lmbda``)."""
    _check_normalize_advantage(cfg)
    algo = algorithm(cfg)
    if algo.loss is None:
        raise ValueError(f"algo={algo.name} trains through its own learner (build_pbt_trainer), not one loss module.")
    loss, average_gae = algo.loss(cfg, agent)
    # feed-forward critic: one call on T + budget states per row (V(s'_t) = V(s_{t+1}) inside an episode; the
    # trainer sets the exact budget per batch). Recurrent: no vmap over V(s) and V(s') (two plain calls are
    # faster, docs/throughput.md), and its sequence pass has data-dependent control flow that vmap cannot trace
    value_estimator = GAE(value_network=agent.critic, average_gae=average_gae, deactivate_vmap=True,
                          shifted=not is_recurrent_config(cfg),
                          **config_kwargs(GAE, cfg.train, only=("gamma", "lmbda")))
    return loss, value_estimator


# ----------------------------------------------------------------------------- hooks
def _aggregate_hook(cfg, trainer, loss, agent, optimizer) -> None:
    """After value estimation, before the mini-epochs: build the leader's off-policy data (SAPG)."""
    trainer.register_op("batch_process", loss.aggregate)


def _epo_hook(cfg, trainer, loss, agent, optimizer) -> None:
    """EPO's genetic step over the followers' latents, from ``algo.epo.*`` by name."""
    GeneticLatentScheduler(
        latents=agent.latents,
        optimizer=optimizer,
        log_std=agent.actor.log_std,
        leader_id=cfg.algo.leader_id,
        seed=cfg.seed,
        **config_kwargs(GeneticLatentScheduler, cfg.algo.epo),
    ).register(trainer)


#: the values of ``pbt.mode``, one per ``recipes/conf/pbt/<mode>.yaml``
PBT_MODES = ("off", "inprocess", "decentralized")


def pbt_mode(cfg: DictConfig) -> str:
    """The ``pbt`` group's switch: ``off``, ``inprocess`` (``pbt=inprocess``: this process holds the
    whole population) or ``decentralized`` (``pbt=decentralized``: this run is one member of a
    population sharing a workspace). A config saved before ``pbt.mode`` existed (a checkpoint's)
    says ``pbt.enabled`` for decentralised PBT and ``algo.name: pbt`` for in-process PBT."""
    group = cfg.get("pbt") or {}
    mode = group.get("mode")
    if mode is None:  # a saved config from before the pbt switch
        legacy_inprocess = (cfg.get("algo") or {}).get("name") == INPROCESS_POPULATION
        mode = "decentralized" if group.get("enabled", False) else "inprocess" if legacy_inprocess else "off"
    if mode not in PBT_MODES:
        raise ValueError(f"pbt.mode={mode!r} is unknown; choose pbt={', pbt='.join(PBT_MODES)}.")
    return mode


def register_algorithm_hooks(cfg: DictConfig, trainer, loss, agent: ActorCritic, optimizer) -> None:
    """Wire algorithm-specific steps into the trainer's TorchRL hook stages (before any resume)."""
    for hook in algorithm(cfg).hooks:
        hook(cfg, trainer, loss, agent, optimizer)
    if pbt_mode(cfg) == "decentralized":
        # last: a member checkpoints every hook registered before it, and resumes them from the workspace
        PBTMember.from_config(cfg.pbt, seed=cfg.seed).register(trainer)


def headline_policy(cfg: DictConfig) -> int:
    """The policy whose return is the run's headline: the SAPG leader / EPO master, else 0."""
    return int(cfg.algo.get("leader_id", 0))


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (torch's on every device) with ``seed``.

    The library draws from torch only; a user's env or hook may draw from the other two.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def device_of(cfg: DictConfig) -> torch.device:
    return torch.device(cfg.device)


# ----------------------------------------------------------------------------- trainers
def build_optimizer(cfg: DictConfig, loss: torch.nn.Module) -> torch.optim.Adam:
    """Adam over the loss's parameters at ``train.lr``; its fused kernel with ``train.fused_adam`` (CPU, CUDA)."""
    params = list(loss.parameters())
    fused = bool(cfg.train.get("fused_adam", True)) and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
    )
    return torch.optim.Adam(params, lr=cfg.train.lr, fused=fused or None)


def _on_policy_trainer(cfg: DictConfig, agent: ActorCritic, collector, **trainer_kwargs) -> OnPolicyTrainer:
    """One loss module and Adam over its parameters, the adaptive LR rule, then the algorithm's hooks."""
    t = cfg.train
    loss, value_estimator = build_loss(cfg, agent)
    optimizer = build_optimizer(cfg, loss)
    schedule = LearningRateSchedule(
        optimizer, mode=t.lr_schedule, total_frames=int(cfg.total_frames),
        **config_kwargs(LearningRateSchedule, t, only=("kl_threshold", "min_lr", "max_lr")),
    )
    normalizers = [n for n in (agent.obs_normalizer,) if n is not None]
    if agent.critic_obs_normalizer is not None:
        normalizers.append((agent.critic_obs_normalizer, "critic_observation"))
    trainer = OnPolicyTrainer(
        collector=collector,
        loss_module=loss,
        optimizer=optimizer,
        value_estimator=value_estimator,
        lr_schedule=schedule,
        kl_actor=agent.actor,
        sequence_minibatches=is_recurrent_config(cfg),  # whole env-rows, TorchRL's recurrent mode
        obs_normalizers=normalizers,
        **config_kwargs(OnPolicyTrainer, t, only=("num_epochs", "num_minibatches", "minibatch_size", "max_grad_norm",
                                                   "reward_scale")),
        **config_kwargs(OnPolicyTrainer, cfg.algo, only=("kl_reduction",)),
        **trainer_kwargs,
    )
    register_algorithm_hooks(cfg, trainer, loss, agent, optimizer)
    return trainer


def build_pbt_trainer(cfg: DictConfig, agent: ActorCritic, collector, **trainer_kwargs) -> PBTTrainer:
    """The in-process population (pbt=inprocess): one learner for all members plus the PBT hook from ``pbt.*``.

    Every member starts from ``train.<name>`` for each of ``HYPERPARAMETERS`` (``pbt.hyperparameters`` says which
    mutate) and follows ``train.lr_schedule`` on its own learning rate (``adaptive``: the KL rule, as PPO's)."""
    learner = PopulationLearner(
        agent.actor.ensemble,
        {k: cfg.train[k] for k in HYPERPARAMETERS},
        generator=torch.Generator(device=cfg.device).manual_seed(cfg.seed),
        **config_kwargs(PopulationLearner, cfg.train, only=("num_minibatches", "reward_scale", "lr_schedule",
                                                             "min_lr", "max_lr")),
    )
    trainer = PBTTrainer(collector=collector, learner=learner, **trainer_kwargs)
    InProcessPBT(learner, cfg.pbt.hyperparameters, seed=cfg.seed, **config_kwargs(InProcessPBT, cfg.pbt)).register(trainer)
    return trainer


def build_agent(cfg: DictConfig, env) -> ActorCritic:
    """The algorithm's networks for ``env``'s observation and action sizes."""
    return algorithm(cfg).agent(cfg, env)


def build_trainer(cfg: DictConfig, agent: ActorCritic, collector, **trainer_kwargs):
    """The algorithm's trainer with its loss, optimiser and hooks registered (resume after this)."""
    return algorithm(cfg).trainer(cfg, agent, collector, **trainer_kwargs)


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Algorithm:
    """What one ``algo.name`` builds. Every recipe decision that depends on the algorithm reads it here."""

    name: str
    agent: Callable[[DictConfig, Any], ActorCritic]  #: (cfg, env) -> networks
    trainer: Callable[..., Any] = _on_policy_trainer  #: (cfg, agent, collector, **trainer_kwargs) -> trainer
    loss: Callable | None = None  #: (cfg, agent) -> (loss module, GAE standardises over the batch)
    hooks: tuple[Callable, ...] = ()  #: (cfg, trainer, loss, agent, optimizer) -> None, registered in order
    population: bool = False  #: independent member networks in one process; the headline is the best member


#: the entry of the in-process population, chosen by ``pbt=inprocess`` (whose member layout is ``algo=pbt``)
INPROCESS_POPULATION = "pbt"

ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("ppo", _latent_agent, loss=_ppo_loss),
        Algorithm("sapg", _latent_agent, loss=_sapg_loss, hooks=(_aggregate_hook,)),
        Algorithm("epo", _latent_agent, loss=_sapg_loss, hooks=(_aggregate_hook, _epo_hook)),
        Algorithm(INPROCESS_POPULATION, _population_agent, trainer=build_pbt_trainer, population=True),
    )
}


def algorithm(cfg: DictConfig) -> Algorithm:
    """The :data:`ALGORITHMS` entry of the run: the in-process population under ``pbt=inprocess``,
    else ``algo.name``'s. The one place the recipes branch on the algorithm. (A config saved
    before ``pbt=inprocess`` existed says ``algo.name=pbt``, which names the same entry.)"""
    name = INPROCESS_POPULATION if pbt_mode(cfg) == "inprocess" else cfg.algo.name
    if name not in ALGORITHMS:
        raise ValueError(f"algo.name={name!r} is unknown; choose one of the algo configs: algo={', '.join(ALGORITHMS)}.")
    return ALGORITHMS[name]
