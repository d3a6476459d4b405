"""Build the parts of a run from its Hydra config; shared by train.py and evaluate.py."""
from __future__ import annotations

import torch
from omegaconf import DictConfig
from torchrl.envs import TransformedEnv
from torchrl.objectives.value import GAE

from torchrl_sapg.envs import make_env
from torchrl_sapg.modules import ActorCritic, make_actor_critic
from torchrl_sapg.modules.recurrent import add_recurrent_transforms, collection_policy, make_recurrent_actor_critic
from torchrl_sapg.objectives import OffPolicyClipPPOLoss, SAPGLoss
from torchrl_sapg.population import GeneticLatentScheduler, PBTMember
from torchrl_sapg.population.ensemble import (
    EnsembleActor,
    PolicyEnsemble,
    RecurrentEnsembleActor,
    RecurrentEnsembleValue,
    RecurrentPolicyEnsemble,
    ensemble_collection_policy,
)
from torchrl_sapg.population.inprocess import PBTTrainer, PopulationLearner
from torchrl_sapg.population.inprocess_pbt import InProcessPBT


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
    (for ``algo=pbt``: every member of the in-process population)."""
    return int(cfg.model.get("lstm_hidden", 0) or 0) > 0


def add_recurrent_env_transforms(cfg: DictConfig, env, agent: ActorCritic):
    """``InitTracker`` and the LSTM hidden-state primers: the single network's, or the population's."""
    if cfg.algo.name != "pbt":
        return add_recurrent_transforms(env, agent)
    for t in agent.actor.ensemble.env_transforms():
        env = env.append_transform(t) if isinstance(env, TransformedEnv) else TransformedEnv(env, t)
    return env


def build_collection_policy(cfg: DictConfig, agent: ActorCritic):
    """The collector's policy: the actor, or actor then critic for recurrent nets (both hidden states recorded)."""
    if not is_recurrent_config(cfg):
        return agent.actor
    if cfg.algo.name == "pbt":
        return ensemble_collection_policy(agent.actor, agent.critic)
    return collection_policy(agent)


def build_agent(cfg: DictConfig, env) -> ActorCritic:
    obs_dim = env.observation_spec["observation"].shape[-1]
    act_dim = env.action_spec.shape[-1]
    if cfg.algo.name == "pbt":
        members = dict(
            num_members=cfg.algo.num_policies,
            hidden_sizes=list(cfg.model.hidden_sizes),
            critic_hidden_sizes=list(cfg.model.critic_hidden_sizes) if cfg.model.critic_hidden_sizes else None,
            activation=cfg.model.activation,
            normalize_observations=cfg.model.normalize_observations,
            init_log_std=cfg.model.init_log_std,
            device=cfg.device,
        )
        if is_recurrent_config(cfg):  # every member MLP -> LSTM, hidden states per env row
            ensemble = RecurrentPolicyEnsemble(obs_dim, act_dim, lstm_hidden=int(cfg.model.lstm_hidden), **members)
            return ActorCritic(RecurrentEnsembleActor(ensemble), RecurrentEnsembleValue(ensemble), None, None)
        ensemble = PolicyEnsemble(obs_dim, act_dim, **members)
        return ActorCritic(EnsembleActor(ensemble), None, None, None)
    critic_key = "critic_observation" if "critic_observation" in env.observation_spec.keys() else None
    if is_recurrent_config(cfg):
        if critic_key is not None:
            raise ValueError("model.lstm_hidden > 0 does not support an asymmetric critic (critic_observation) yet.")
        return make_recurrent_actor_critic(
            obs_dim,
            act_dim,
            num_policies=cfg.algo.num_policies,
            latent_dim=cfg.algo.latent_dim,
            latent_init_std=cfg.algo.get("latent_init_std", 1.0),
            mlp_sizes=list(cfg.model.hidden_sizes),
            lstm_hidden=int(cfg.model.lstm_hidden),
            critic_mlp_sizes=list(cfg.model.critic_hidden_sizes) if cfg.model.critic_hidden_sizes else None,
            activation=cfg.model.activation,
            normalize_observations=cfg.model.normalize_observations,
            init_log_std=cfg.model.init_log_std,
            device=cfg.device,
        )
    return make_actor_critic(
        obs_dim,
        act_dim,
        critic_observation_key=critic_key,
        critic_observation_dim=env.observation_spec[critic_key].shape[-1] if critic_key else None,
        num_policies=cfg.algo.num_policies,
        latent_dim=cfg.algo.latent_dim,
        latent_init_std=cfg.algo.get("latent_init_std", 1.0),
        actor_hidden_sizes=list(cfg.model.hidden_sizes),
        critic_hidden_sizes=list(cfg.model.critic_hidden_sizes) if cfg.model.critic_hidden_sizes else None,
        activation=cfg.model.activation,
        normalize_observations=cfg.model.normalize_observations,
        init_log_std=cfg.model.init_log_std,
        input_init=cfg.model.get("input_init", "split"),
        device=cfg.device,
    )


def build_loss(cfg: DictConfig, agent: ActorCritic):
    t = cfg.train
    if t.normalize_advantage not in ("batch", "minibatch", "none"):
        raise ValueError(f"train.normalize_advantage={t.normalize_advantage!r}: choose batch, minibatch or none.")
    if cfg.algo.name == "ppo":
        # TorchRL's ClipPPOLoss on on-policy data (tests/torchrl_conformance), plus the analytic KL from its own
        # forward pass, which saves the adaptive learning rate a second actor pass per minibatch
        loss = OffPolicyClipPPOLoss(
            agent.actor,
            agent.critic,
            clip_epsilon=t.clip_epsilon,
            entropy_bonus=t.entropy_coeff > 0,
            entropy_coeff=t.entropy_coeff,
            critic_coeff=t.critic_coeff,
            loss_critic_type=t.loss_critic_type,
            normalize_advantage=t.normalize_advantage == "minibatch",
            clip_value=t.clip_value,
        )
        average_gae = t.normalize_advantage == "batch"
    elif cfg.algo.name in ("sapg", "epo"):
        a = cfg.algo
        loss = SAPGLoss(
            agent.actor,
            agent.critic,
            num_policies=a.num_policies,
            leader_id=a.leader_id,
            aggregation=a.aggregation,
            off_policy_ratio=a.off_policy_ratio,
            off_policy_coeff=a.off_policy_coeff,
            entropy_coeffs=list(a.entropy_coeffs) if a.entropy_coeffs is not None else None,
            entropy_sigma=None if a.entropy_coeffs is not None else a.entropy_sigma,
            clip_epsilon=t.clip_epsilon,
            critic_coeff=t.critic_coeff,
            clip_value=t.clip_value,
            loss_critic_type=t.loss_critic_type,
            bounds_loss_coeff=a.bounds_loss_coeff,
            mu_correction=a.mu_correction,
            mu_truncation=a.get("mu_truncation"),
            critic_target=a.critic_target,
            off_policy_target=a.get("off_policy_target") or "td0",
            off_policy_lambda=a.get("off_policy_lambda", 1.0),
            n_steps=a.n_steps,
            gamma=t.gamma,
            advantage_normalization=a.get("advantage_normalization") or t.normalize_advantage,
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        # SAPGLoss.aggregate standardises over the aggregated batch (on- and off-policy rows)
        average_gae = False
    else:
        raise ValueError(f"algo.name={cfg.algo.name!r} is unknown; choose ppo, sapg or epo.")
    # a recurrent critic's sequence pass has data-dependent control flow (resets): no vmap
    value_estimator = GAE(
        gamma=t.gamma, lmbda=t.lmbda, value_network=agent.critic, average_gae=average_gae,
        deactivate_vmap=is_recurrent_config(cfg),
    )
    return loss, value_estimator


def headline_policy(cfg: DictConfig) -> int:
    """The policy whose return is the run's headline: the SAPG leader / EPO master, else 0."""
    return int(cfg.algo.get("leader_id", 0))


def register_algorithm_hooks(cfg: DictConfig, trainer, loss, agent: ActorCritic, optimizer) -> None:
    """Wire algorithm-specific steps into the trainer's TorchRL hook stages (before any resume)."""
    if cfg.algo.name in ("sapg", "epo"):
        # after value estimation, before the mini-epochs: build the leader's off-policy data
        trainer.register_op("batch_process", loss.aggregate)
    if cfg.algo.name == "epo":
        e = cfg.algo.epo
        GeneticLatentScheduler(
            latents=agent.latents,
            optimizer=optimizer,
            log_std=agent.actor.log_std,
            leader_id=cfg.algo.leader_id,
            num_elites=e.num_elites,
            mutation_std=e.mutation_std,
            gamma=e.gamma,
            trigger=e.trigger,
            warmup_frames=int(e.warmup_frames),
            interval_frames=int(e.interval_frames),
            fitness_key=e.fitness_key,
            fitness_decay=e.fitness_decay,
            missing_fitness=e.missing_fitness,
            log_std_mode=e.log_std_mode,
            seed=cfg.seed,
        ).register(trainer)
    pbt = cfg.get("pbt")
    if pbt is not None and pbt.get("enabled", False):
        # last: a member checkpoints every hook registered before it, and resumes them from the workspace
        PBTMember.from_config(pbt, seed=cfg.seed).register(trainer)


def device_of(cfg: DictConfig) -> torch.device:
    return torch.device(cfg.device)


def build_pbt_trainer(cfg: DictConfig, agent: ActorCritic, collector, **trainer_kwargs) -> PBTTrainer:
    """The in-process population (algo=pbt): one learner for all members plus the PBT hook."""
    t, a = cfg.train, cfg.algo
    ensemble = agent.actor.ensemble
    learner = PopulationLearner(
        ensemble,
        {"lr": t.lr, "clip_epsilon": t.clip_epsilon, "entropy_coeff": t.entropy_coeff, "critic_coeff": t.critic_coeff,
         "gamma": t.gamma, "lmbda": t.lmbda, "num_epochs": t.num_epochs},
        num_minibatches=t.num_minibatches,
        max_grad_norm=t.max_grad_norm,
        reward_scale=t.reward_scale,
        generator=torch.Generator(device=cfg.device).manual_seed(cfg.seed),
    )
    trainer = PBTTrainer(collector=collector, learner=learner, **trainer_kwargs)
    InProcessPBT(
        learner,
        a.hyperparameters,
        interval_frames=int(a.interval_frames),
        start_frames=int(a.start_frames),
        burn_in_frames=int(a.burn_in_frames),
        selection=a.selection,
        beta_mut=a.beta_mut,
        mu_min=a.mu_min,
        mu_max=a.mu_max,
        fitness_key=a.fitness_key,
        fitness_decay=a.fitness_decay,
        seed=cfg.seed,
    ).register(trainer)
    return trainer
