"""A TorchRL collector for M policies sharing one batched env, with per-policy episode statistics."""
from __future__ import annotations

import numbers
from typing import Callable, Iterator, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torchrl.collectors import Collector
from torchrl.envs import EnvBase, RewardSum, StepCounter, TransformedEnv

from torchrl_sapg.envs.policy_id import PolicyIdTransform, check_policy_id_spec
from torchrl_sapg.modules.latents import check_policy_ids


def _has_key(spec, key: NestedKey) -> bool:
    return key in spec.keys(True, True)


def prepare_population_env(
    env: EnvBase,
    num_policies: int,
    *,
    policy_id_key: NestedKey = "policy_id",
    episode_reward_key: NestedKey = "episode_reward",
    step_count_key: NestedKey = "step_count",
) -> EnvBase:
    """Append what a population needs to ``env`` unless it is already there.

    Adds :class:`PolicyIdTransform` (``"policy_id"``), TorchRL's ``RewardSum``
    (``"episode_reward"``) and ``StepCounter`` (``"step_count"``). An env that already writes
    ``policy_id_key`` must declare it with the env batch shape ``[N]``, an integer dtype and
    exactly ``num_policies`` ids (else a ``ValueError`` naming the key and the fix, see
    :func:`~torchrl_sapg.envs.policy_id.check_policy_id_spec`).

    Args:
        env: a batched env with batch shape ``[N]``.
        num_policies: ``M``; ``N % M == 0``.
        policy_id_key: where the policy id is (or is to be) written.
        episode_reward_key: where ``RewardSum`` writes the running return.
        step_count_key: where ``StepCounter`` writes the episode step.

    Examples:
        >>> from torchrl_sapg.envs import PendulumEnv
        >>> env = prepare_population_env(PendulumEnv(num_envs=4, seed=0), 2)
        >>> sorted(k for k in env.reset().keys() if isinstance(k, str))
        ['done', 'episode_reward', 'observation', 'policy_id', 'step_count', 'terminated', 'truncated']
    """
    if env.batch_dims != 1:
        raise ValueError(
            f"a population env needs a 1-d batch shape [num_envs], got {tuple(env.batch_size)}."
        )
    obs_spec = env.observation_spec
    transforms = []
    if _has_key(obs_spec, policy_id_key):  # the env's own ids: shape [N], integer, M of them
        check_policy_id_spec(obs_spec, num_policies, batch_size=env.batch_size, policy_id_key=policy_id_key)
    else:
        transforms.append(PolicyIdTransform(num_policies, policy_id_key=policy_id_key))
    if not _has_key(obs_spec, episode_reward_key):
        reward_key = env.reward_key
        transforms.append(RewardSum(in_keys=[reward_key], out_keys=[episode_reward_key]))
    if not _has_key(obs_spec, step_count_key):
        transforms.append(StepCounter(step_count_key=step_count_key))
    for t in transforms:
        env = env.append_transform(t) if isinstance(env, TransformedEnv) else TransformedEnv(env, t)
    return env


class PopulationCollector(Collector):
    """TorchRL ``Collector`` for ``M`` policies on the ``M`` blocks of one batched env.

    Yields ``[N, T]`` batches (``T = frames_per_batch // N``) tagged with ``"policy_id"``, the
    behaviour log-prob and the usual ``("next", ...)`` entries, and keeps per-policy episode
    statistics of every episode that ended since the last :meth:`episode_stats` call: mean
    return, mean length, count, and the episode-end value of any ``episode_keys`` the env
    writes (e.g. ``"success"``, ``"true_objective"``). These feed logging, EPO's fitness and
    PBT's objective. Statistics are accumulated on the device with ``index_add_``, never
    with per-env Python loops or host syncs.

    Args:
        env: a batched TorchRL env with batch shape ``[N]``, ``N % num_policies == 0``.
            :func:`prepare_population_env` is applied to it.
        policy: the (latent-conditioned) policy; reads ``"policy_id"``.
        num_policies: ``M`` (1 is plain single-policy collection).
        frames_per_batch: must be a multiple of ``N``.
        total_frames: ``-1`` (default) runs until the caller stops.
        episode_keys: per-episode scalars read at episode end when present.
        **kwargs: forwarded to :class:`torchrl.collectors.Collector`; ``track_traj_ids`` defaults to
            ``False`` here (``True`` adds TorchRL's ``("collector", "traj_ids")``).

    Examples:
        >>> from torchrl_sapg.envs import PendulumEnv
        >>> from torchrl_sapg.modules import LatentConditionedActor, PolicyLatents
        >>> actor = LatentConditionedActor(3, 1, num_policies=2, latents=PolicyLatents(2, 4))
        >>> collector = PopulationCollector(PendulumEnv(num_envs=8, seed=0), actor, num_policies=2,
        ...                                 frames_per_batch=8 * 250)
        >>> batch = next(iter(collector))
        >>> batch.shape, batch["policy_id"][:, 0].tolist()
        (torch.Size([8, 250]), [0, 0, 0, 0, 1, 1, 1, 1])
        >>> stats = collector.episode_stats()
        >>> stats.shape, stats["count"].tolist()
        (torch.Size([2]), [4.0, 4.0])
    """

    def __init__(
        self,
        env: EnvBase,
        policy: Callable[[TensorDictBase], TensorDictBase],
        *,
        num_policies: int,
        frames_per_batch: int,
        total_frames: int = -1,
        policy_id_key: NestedKey = "policy_id",
        episode_reward_key: NestedKey = "episode_reward",
        step_count_key: NestedKey = "step_count",
        episode_keys: Sequence[NestedKey] = ("success", "true_objective"),
        **kwargs,
    ):
        if not isinstance(env, EnvBase):
            raise TypeError(
                f"PopulationCollector needs a batched EnvBase instance, got {type(env).__name__}."
            )
        if not isinstance(num_policies, numbers.Integral) or num_policies < 1:
            raise ValueError(f"num_policies must be a positive int, got {num_policies!r}.")
        if not isinstance(frames_per_batch, numbers.Integral) or frames_per_batch < 1:
            raise ValueError(
                f"frames_per_batch must be a positive int (num_envs * horizon), got {frames_per_batch!r}."
            )
        env = prepare_population_env(
            env,
            num_policies,
            policy_id_key=policy_id_key,
            episode_reward_key=episode_reward_key,
            step_count_key=step_count_key,
        )
        # fails at construction, not at the first batch, if the ids are missing or malformed
        check_policy_id_spec(env.observation_spec, num_policies, batch_size=env.batch_size, policy_id_key=policy_id_key)
        num_envs = env.batch_size[0]
        if frames_per_batch % num_envs != 0:
            raise ValueError(
                f"frames_per_batch={frames_per_batch} must be a multiple of num_envs={num_envs} so "
                f"every batch is [num_envs, T]; e.g. frames_per_batch={num_envs * max(1, frames_per_batch // num_envs)}."
            )
        # our policies need no env-side transforms (no InitTracker etc.); say so explicitly
        kwargs.setdefault("auto_register_policy_transforms", False)
        # nothing here reads ("collector", "traj_ids"); tracking them costs two host syncs per step with an
        # episode end (TorchRL's `_update_traj_ids`: `.any()`, then an `arange` sized by a sum)
        kwargs.setdefault("track_traj_ids", False)
        super().__init__(env, policy, frames_per_batch=frames_per_batch, total_frames=total_frames, **kwargs)
        self.num_policies = num_policies
        self.num_envs = num_envs
        self.horizon = frames_per_batch // num_envs
        self.policy_id_key = policy_id_key
        self.episode_reward_key = episode_reward_key
        self.step_count_key = step_count_key
        obs_keys = set(env.observation_spec.keys(True, True)) | set(env.full_done_spec.keys(True, True))
        self.episode_keys = [k for k in episode_keys if k in obs_keys]
        device = self.storing_device or env.device or torch.device("cpu")
        self._stat_names = ["return", "length"] + [k if isinstance(k, str) else "/".join(k) for k in self.episode_keys]
        self._sums = torch.zeros(len(self._stat_names), num_policies, device=device, dtype=torch.float64)
        self._counts = torch.zeros(num_policies, device=device, dtype=torch.float64)

    def iterator(self) -> Iterator[TensorDictBase]:
        for batch in super().iterator():
            self.record_episodes(batch)
            yield batch

    @torch.no_grad()
    def record_episodes(self, batch: TensorDictBase) -> None:
        """Add every episode that ends in ``batch`` to the per-policy running sums."""
        nxt = batch.get("next")
        done_key = "done"
        for key in (self.policy_id_key, ("next", done_key), ("next", self.episode_reward_key)):
            if key not in batch.keys(True, True):
                raise KeyError(
                    f"PopulationCollector: {key!r} is missing from the collected batch. The env must "
                    "write it (see prepare_population_env) and the policy must not drop it."
                )
        policy_id = batch.get(self.policy_id_key).reshape(-1)
        check_policy_ids(policy_id, self.num_policies)
        done = nxt.get(done_key).reshape(-1).to(self._sums.dtype)
        columns = [nxt.get(self.episode_reward_key), nxt.get(self.step_count_key)]
        columns += [nxt.get(k) for k in self.episode_keys]
        values = torch.stack([c.reshape(-1).to(self._sums.dtype) for c in columns])  # [S, N*T]
        policy_id = policy_id.to(self._sums.device)
        self._sums.index_add_(1, policy_id, values.to(self._sums.device) * done.to(self._sums.device))
        self._counts.index_add_(0, policy_id, done.to(self._sums.device))

    def episode_stats(self, reset: bool = True) -> TensorDict:
        """Per-policy statistics of the episodes finished since the last read, as a ``[M]`` TensorDict.

        Keys: ``"return"``, ``"length"`` and each present episode key (means; NaN for a policy
        with no finished episode) and ``"count"``. ``reset=False`` peeks without clearing.
        """
        counts = self._counts.clone()
        means = self._sums / counts.clamp_min(1)
        means = torch.where(counts > 0, means, torch.full_like(means, float("nan")))
        out = TensorDict({name: means[i].float() for i, name in enumerate(self._stat_names)}, [self.num_policies])
        out.set("count", counts.float())
        if reset:
            self._sums.zero_()
            self._counts.zero_()
        return out

    def state_dict(self):
        state = super().state_dict()
        state["episode_sums"] = self._sums.clone()
        state["episode_counts"] = self._counts.clone()
        return state

    def load_state_dict(self, state_dict, **kwargs) -> None:
        state_dict = dict(state_dict)
        sums = state_dict.pop("episode_sums", None)
        counts = state_dict.pop("episode_counts", None)
        super().load_state_dict(state_dict, **kwargs)
        if sums is not None:
            self._sums.copy_(sums)
            self._counts.copy_(counts)
