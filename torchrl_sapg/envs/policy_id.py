"""Tag every env of a batched environment with the id of the policy that owns it."""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torchrl.data import Categorical, Composite
from torchrl.envs.transforms import Transform


def block_policy_ids(num_envs: int, num_policies: int, device=None) -> torch.Tensor:
    """Return the int64 policy id of each env: policy ``i`` owns envs ``[i*N/M, (i+1)*N/M)``.

    Raises a ``ValueError`` naming both numbers when ``num_envs % num_policies != 0``.

    Examples:
        >>> block_policy_ids(6, 3)
        tensor([0, 0, 1, 1, 2, 2])
    """
    if num_policies < 1:
        raise ValueError(f"num_policies must be >= 1, got {num_policies}.")
    if num_envs % num_policies != 0:
        raise ValueError(
            f"num_envs={num_envs} is not divisible by num_policies={num_policies}: every "
            f"policy owns an equal block of envs. Choose num_envs as a multiple of "
            f"num_policies (e.g. {num_policies * max(1, round(num_envs / num_policies))})."
        )
    block = num_envs // num_policies
    return torch.arange(num_envs, device=device).div_(block, rounding_mode="floor")


def _declared_num_ids(spec) -> int | None:
    """The number of ids a ``Categorical`` spec declares (``None`` for other specs)."""
    return getattr(getattr(spec, "space", None), "n", None)


def _fix(num_policies: int, key: NestedKey) -> str:
    kw = "" if key == "policy_id" else f", policy_id_key={key!r}"
    return f"env = env.append_transform(PolicyIdTransform({num_policies}{kw}))"


def check_policy_id_spec(
    observation_spec: Composite,
    num_policies: int,
    *,
    batch_size: torch.Size | tuple[int, ...] | None = None,
    policy_id_key: NestedKey = "policy_id",
) -> None:
    """Raise one clear ``ValueError`` unless ``observation_spec`` declares a usable policy id.

    Usable: the key is present, its shape is the env batch shape ``[N]`` (no trailing 1), its
    dtype an integer (int64, as :class:`PolicyIdTransform` writes), and a ``Categorical`` spec
    declares exactly ``num_policies`` ids. The message names the key, what was expected and
    the fix (append ``PolicyIdTransform(num_policies)``).

    Args:
        observation_spec: the env's ``observation_spec`` (a ``Composite``).
        num_policies: ``M``, the number of policies the ids must index.
        batch_size: the env batch shape ``[N]`` (default: ``observation_spec.shape``).
        policy_id_key: where the id lives (default ``"policy_id"``).

    Examples:
        >>> from torchrl.envs import TransformedEnv
        >>> from torchrl_sapg.envs import PendulumEnv
        >>> env = TransformedEnv(PendulumEnv(num_envs=4, seed=0), PolicyIdTransform(2))
        >>> check_policy_id_spec(env.observation_spec, 2)
        >>> check_policy_id_spec(PendulumEnv(num_envs=4).observation_spec, 2)
        Traceback (most recent call last):
        ...
        ValueError: the env's observation_spec has no 'policy_id' entry; ...
    """
    batch_size = torch.Size(observation_spec.shape if batch_size is None else batch_size)
    expected = f"shape {tuple(batch_size)} (the env batch shape [N], no trailing 1), dtype torch.int64"
    if policy_id_key not in observation_spec.keys(True, True):
        raise ValueError(
            f"the env's observation_spec has no {policy_id_key!r} entry; a population env needs one "
            f"({expected}, Categorical({num_policies})): {_fix(num_policies, policy_id_key)} "
            "(prepare_population_env and PopulationCollector add it when it is absent)."
        )
    spec = observation_spec[policy_id_key]
    dtype = spec.dtype
    if spec.shape != batch_size or dtype is None or dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise ValueError(
            f"the env declares {policy_id_key!r} with shape {tuple(spec.shape)}, dtype {dtype}; expected "
            f"{expected}. Let PolicyIdTransform rewrite it: {_fix(num_policies, policy_id_key)} "
            f"(or drop the env's own {policy_id_key!r})."
        )
    n = _declared_num_ids(spec)
    if n is not None and n != num_policies:
        raise ValueError(
            f"the env already writes {policy_id_key!r} for {n} policies but num_policies="
            f"{num_policies}; build PolicyIdTransform with the same number."
        )


class PolicyIdTransform(Transform):
    """Write the integer key ``"policy_id"`` (int64, shape = env batch shape) at reset and step.

    Policy ``i`` owns the contiguous block of envs ``[i*N/M, (i+1)*N/M)`` (SAPG, Sec. 4.1:
    the N environments are split into M blocks, one per policy). The id is declared in the
    observation spec, so collectors store it and ``("next", "policy_id")`` exists for value
    estimation. The env must have a one-dimensional batch shape ``[N]`` with
    ``N % num_policies == 0``. An env that declares its own ``policy_id_key`` gets it rewritten
    (shape ``[N]``, int64), unless it declares a different number of ids (``ValueError``).

    Args:
        num_policies: the number of policies ``M``.
        policy_id_key: where the id is written. Defaults to ``"policy_id"``.

    Examples:
        >>> from torchrl.envs import TransformedEnv
        >>> from torchrl_sapg.envs import PendulumEnv
        >>> env = TransformedEnv(PendulumEnv(num_envs=6, seed=0), PolicyIdTransform(3))
        >>> env.reset()["policy_id"]
        tensor([0, 0, 1, 1, 2, 2])
    """

    def __init__(self, num_policies: int, *, policy_id_key: NestedKey = "policy_id"):
        if not isinstance(num_policies, int) or num_policies < 1:
            raise ValueError(f"num_policies must be a positive int, got {num_policies!r}.")
        super().__init__(in_keys=[], out_keys=[policy_id_key])
        self.num_policies = num_policies
        self.policy_id_key = policy_id_key
        self._ids: torch.Tensor | None = None

    def _policy_ids(self, batch_size: torch.Size, device) -> torch.Tensor:
        ids = self._ids
        if ids is None or ids.shape != batch_size or ids.device != torch.device(device or "cpu"):
            if len(batch_size) != 1:
                raise ValueError(
                    f"PolicyIdTransform needs an env with a 1-d batch shape [num_envs], got "
                    f"{tuple(batch_size)}. Flatten or reshape the env batch first."
                )
            ids = block_policy_ids(batch_size[0], self.num_policies, device=device)
            self._ids = ids
        return ids

    def _write(self, tensordict: TensorDictBase) -> TensorDictBase:
        ids = self._policy_ids(tensordict.batch_size, tensordict.device)
        # a fresh view per call: downstream in-place ops must never alias the cached ids
        tensordict.set(self.policy_id_key, ids.clone())
        return tensordict

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        return self._write(next_tensordict)

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return self._write(tensordict_reset)

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        batch_size = observation_spec.shape
        # validates N % M when the spec is first read (PopulationCollector does so at construction)
        self._policy_ids(batch_size, observation_spec.device)
        if self.policy_id_key in observation_spec.keys(True, True):
            n = _declared_num_ids(observation_spec[self.policy_id_key])
            if n is not None and n != self.num_policies:  # a wrong shape / dtype is simply rewritten
                raise ValueError(
                    f"the env already writes {self.policy_id_key!r} for {n} policies but "
                    f"PolicyIdTransform(num_policies={self.num_policies}) would overwrite it; use one "
                    "PolicyIdTransform with the population's number of policies."
                )
        observation_spec[self.policy_id_key] = Categorical(
            self.num_policies, shape=batch_size, dtype=torch.int64, device=observation_spec.device
        )
        return observation_spec

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        return self._write(tensordict)
