"""Latent-conditioned actor and critic: one shared backbone, one learned latent per policy."""
from __future__ import annotations

import functools
import itertools
import math
from typing import Sequence

import torch
from tensordict.utils import NestedKey
from torch import nn
from torch._C._functorch import is_functorch_wrapped_tensor
from torchrl.modules import IndependentNormal, ProbabilisticActor, ValueOperator

from torchrl_sapg.modules.latents import PolicyLatents, check_policy_ids
from torchrl_sapg.modules.normalization import ObservationNormalizer
from torchrl_sapg.modules.td_module import DirectWriteMixin, DirectWriteModule

_ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU, "gelu": nn.GELU}
_IN_PLACE = (nn.ELU, nn.ReLU, nn.SiLU)  # the activations with an ``inplace`` argument
#: up to this many policies the folded first layer multiplies a one-hot id matrix instead of gathering rows
_ONE_HOT_MAX_POLICIES = 16


def activation_class(name: str) -> type[nn.Module]:
    """The ``nn.Module`` class of an activation name (``"elu"``, ``"relu"``, ``"tanh"``...)."""
    try:
        return _ACTIVATIONS[name.lower()]
    except KeyError:
        raise ValueError(f"activation={name!r} is unknown; choose one of {sorted(_ACTIVATIONS)}.") from None


class LatentConditionedMLP(nn.Module):
    """``mlp(concat(normalise(obs), phi[policy_id]))``: the shared backbone of SAPG (Sec. 4.2).

    The first layer is evaluated folded, ``W_obs·obs + (W_phi·phi + b)[policy_id]``: the same
    parameters and function as the concatenation, without a per-row latent matmul. Up to 16
    policies (and without latents, where the bias is the one row) the first layer is one GEMM of
    ``[obs, onehot(policy_id)]``; beyond, a gather of the rows the GEMM accumulates into. Hidden
    activations that can run in place do. docs/throughput.md has the measurements.

    Args:
        observation_dim: size of the (flat) observation.
        out_dim: size of the output.
        latents: the shared :class:`PolicyLatents` table (``None`` or ``latent_dim=0``: no
            conditioning, a plain MLP).
        hidden_sizes: widths of the hidden layers.
        activation: ``"elu"`` (the paper's), ``"relu"``, ``"tanh"``, ``"silu"`` or ``"gelu"``.
        obs_normalizer: an :class:`ObservationNormalizer` applied to the observation first.
        input_init: ``"split"`` (default): the first layer's observation and latent columns are
            initialised as two separate ``nn.Linear`` (fan-in ``observation_dim`` and
            ``latent_dim``); ``"joint"``: PyTorch's default over the concatenated input (fan-in
            ``observation_dim + latent_dim``), as the reference code's networks do. See
            :func:`_init_split_input_layer`.

    Examples:
        >>> net = LatentConditionedMLP(3, 2, latents=PolicyLatents(2, 4), hidden_sizes=(16,))
        >>> net(torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        observation_dim: int,
        out_dim: int,
        *,
        latents: PolicyLatents | None = None,
        hidden_sizes: Sequence[int] = (256, 128, 64),
        activation: str = "elu",
        obs_normalizer: ObservationNormalizer | None = None,
        input_init: str = "split",
    ):
        super().__init__()
        if input_init not in ("split", "joint"):
            raise ValueError(f"input_init={input_init!r}: choose 'split' (default) or 'joint' (the reference code's).")
        self.latents = latents
        self.obs_normalizer = obs_normalizer
        latent_dim = latents.latent_dim if latents is not None else 0
        act = activation_class(activation)
        # in place where the activation allows it: each follows a Linear, whose backward does not need its
        # output, and ELU's backward then reads the saved result instead of recomputing exp (docs/throughput.md)
        make_act = functools.partial(act, inplace=True) if act in _IN_PLACE else act
        layers: list[nn.Module] = []
        width = observation_dim + latent_dim
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), make_act()]
            width = h
        layers.append(nn.Linear(width, out_dim))
        self.mlp = nn.Sequential(*layers)
        if latent_dim > 0 and input_init == "split":
            _init_split_input_layer(self.mlp[0], observation_dim, latent_dim)

    def forward(self, observation: torch.Tensor, policy_id: torch.Tensor | None = None) -> torch.Tensor:
        x = observation
        if self.obs_normalizer is not None:
            x = self.obs_normalizer(x)
        first = self.mlp[0]
        obs_dim = x.shape[-1]
        if self.latents is None or self.latents.latent_dim == 0:
            table, ids = first.bias.unsqueeze(0), None  # one "policy": the bias
        else:
            if policy_id is None:
                raise KeyError("policy_id is required by a latent-conditioned network but is missing.")
            check_policy_ids(policy_id, self.latents.num_policies)
            # first layer on concat(x, phi[id]), folded: W_obs·x + (W_phi·phi + b)[id]. The latent part is computed
            # once per policy, not once per row; same parameters, same function, fewer FLOPs (docs/throughput.md)
            table, ids = nn.functional.linear(self.latents.weight, first.weight[:, obs_dim:], first.bias), policy_id
        w_obs = first.weight[:, :obs_dim]
        if ids is not None and ids.shape != x.shape[:-1]:  # broadcast ids (e.g. one id for all rows)
            return self._after_first_layer(nn.functional.linear(x, w_obs) + nn.functional.embedding(ids, table))
        flat_x = x.reshape(-1, obs_dim)
        m = table.shape[0]
        if ids is None or (m <= _ONE_HOT_MAX_POLICIES and torch.is_grad_enabled()):
            # [x, onehot(id)] @ [W_obs^T; table]: one GEMM forward and one backward, the bias (or the policy's row)
            # inside it; no broadcast bias copy, no bias-gradient reduction, no gather or scatter. Without autograd
            # (collection, value estimation) the gather below is cheaper: it has no backward to save.
            h = _with_one_hot(flat_x, ids, m) @ torch.cat([w_obs.t(), table], dim=0)
        else:
            # embedding, not table[id]: its backward is a fast scatter-add; the GEMM accumulates into the gathered rows
            rows = nn.functional.embedding(ids.reshape(-1), table)
            if torch.compiler.is_compiling():  # inductor fuses the gather into the add; an extern addmm_ would not
                h = nn.functional.linear(flat_x, w_obs) + rows
            else:
                # a contiguous [obs, H] weight: through a transposed view the backward computes its thin gradient as
                # grad^T @ x, a GEMM with obs-many output columns that ran 2x slower than x^T @ grad on CPU
                w_t = w_obs.t().contiguous()
                if is_functorch_wrapped_tensor(rows):  # torch.func transforms have no batching rule for addmm_
                    h = torch.addmm(rows, flat_x, w_t)
                else:
                    h = rows.addmm_(flat_x, w_t)
        if x.dim() != 2:  # a reshape only where needed: the in-place activation on a view would cost a copy in backward
            h = h.reshape(*x.shape[:-1], -1)
        return self._after_first_layer(h)

    def _after_first_layer(self, h: torch.Tensor) -> torch.Tensor:
        for layer in itertools.islice(self.mlp, 1, None):  # not self.mlp[1:], which builds a new Sequential per call
            h = layer(h)
        return h


def _with_one_hot(x: torch.Tensor, ids: torch.Tensor | None, m: int) -> torch.Tensor:
    """``[x, onehot(ids)]`` (``[x, 1]`` without ids) for the folded first layer's single GEMM."""
    if ids is None:
        return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=-1)
    if torch.compiler.is_compiling() or is_functorch_wrapped_tensor(x) or x.requires_grad:
        # by comparison, not F.one_hot, which validates the ids with a host sync
        return torch.cat([x, (ids.reshape(-1, 1) == torch.arange(m, device=ids.device)).to(x.dtype)], dim=-1)
    # each row of [0, I] gathered by id, then x copied into the leading columns: two ops instead of a zero fill, a
    # copy and a scatter (17 against 37 us at 3,584 rows on CPU, docs/throughput.md)
    out = _one_hot_rows(x.shape[1], m, x.dtype, x.device).index_select(0, ids.reshape(-1))
    out[:, : x.shape[1]] = x
    return out


@functools.lru_cache(maxsize=64)
def _one_hot_rows(width: int, m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[0, I]``: ``m`` rows of ``width`` zeros followed by the ``m x m`` identity (read-only, shared)."""
    return torch.cat([torch.zeros(m, width, dtype=dtype, device=device), torch.eye(m, dtype=dtype, device=device)], dim=1)


def _init_split_input_layer(layer: nn.Linear, observation_dim: int, latent_dim: int) -> None:
    """Initialise the observation and latent columns of ``layer`` as two separate ``nn.Linear``.

    PyTorch scales a layer's initial weights by ``1/sqrt(fan_in)``. Concatenating a 32-d latent
    to a 3-d observation would shrink the observation's weights ~3.4x and let the latent
    dominate the first pre-activation. On the embedded Pendulum that alone took a single-policy
    PPO (``num_policies=1``, one learned latent) from -178 to -713 (docs/sapg.md). Here the
    observation columns and the bias get the ``U(±1/sqrt(observation_dim))`` of an
    unconditioned network, and the latent columns ``U(±1/sqrt(latent_dim))``, so both input
    groups start with the same pre-activation scale.
    """
    with torch.no_grad():
        bound = 1.0 / math.sqrt(observation_dim)
        layer.weight[:, :observation_dim].uniform_(-bound, bound)
        layer.bias.uniform_(-bound, bound)
        bound = 1.0 / math.sqrt(latent_dim)
        layer.weight[:, observation_dim:].uniform_(-bound, bound)


def check_latents(latents: PolicyLatents | None, num_policies: int) -> None:
    """Raise if a shared latent table was built for another number of policies."""
    if latents is not None and latents.num_policies != num_policies:
        raise ValueError(
            f"latents has {latents.num_policies} rows but num_policies={num_policies}; "
            "build PolicyLatents with the same num_policies."
        )


def _backbone(observation_dim, out_dim, num_policies, latents, hidden_sizes, activation, obs_normalizer, input_init):
    check_latents(latents, num_policies)
    return LatentConditionedMLP(
        observation_dim,
        out_dim,
        latents=latents,
        hidden_sizes=hidden_sizes,
        activation=activation,
        obs_normalizer=obs_normalizer,
        input_init=input_init,
    )


class _GaussianHead(nn.Module):
    """loc from the backbone, a state-independent log-std per policy (``[M, action_dim]``)."""

    def __init__(self, backbone: LatentConditionedMLP, num_policies: int, action_dim: int, init_log_std: float):
        super().__init__()
        self.backbone = backbone
        self.num_policies = num_policies
        self.log_std = nn.Parameter(torch.full((num_policies, action_dim), float(init_log_std)))

    def forward(self, observation: torch.Tensor, policy_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = self.backbone(observation, policy_id)
        if self.backbone.latents is None or self.backbone.latents.latent_dim == 0:  # else the backbone checked them
            check_policy_ids(policy_id, self.num_policies)
        # index_select, not embedding: its backward is an index_add_, embedding's a sort (4x slower at 3k rows)
        scale = self.log_std.index_select(0, policy_id.reshape(-1)).reshape(*policy_id.shape, -1).exp()
        return loc, scale


class LatentConditionedActor(ProbabilisticActor):
    """Gaussian policy ``N(mlp(obs, phi[policy_id]), exp(log_std[policy_id]))`` for M policies.

    All M policies share the backbone; policy ``j`` is told apart by its learned latent
    ``phi_j`` (SAPG Sec. 4.2) and owns a state-independent log-std row (``[M, action_dim]``,
    as in the paper). Reads ``observation_key`` and ``policy_id_key``; writes ``"loc"``,
    ``"scale"``, the action and its log-prob (``"action_log_prob"``, TorchRL's default).
    With ``num_policies=1`` and ``latents=None`` it is an ordinary PPO Gaussian actor.

    Args:
        observation_dim: flat observation size.
        action_dim: action size.
        num_policies: ``M``.
        latents: a (possibly shared with the critic) :class:`PolicyLatents`; ``None`` for none.
        hidden_sizes, activation: the backbone MLP.
        obs_normalizer: an :class:`ObservationNormalizer` (may be shared with the critic).
        init_log_std: initial value of every log-std entry.
        input_init: ``"split"`` or ``"joint"`` first-layer initialisation (:class:`LatentConditionedMLP`).
        observation_key, policy_id_key, action_key: TensorDict keys.

    Examples:
        >>> from tensordict import TensorDict
        >>> actor = LatentConditionedActor(3, 1, num_policies=2, latents=PolicyLatents(2, 4))
        >>> td = TensorDict({"observation": torch.randn(4, 3), "policy_id": torch.tensor([0, 0, 1, 1])}, [4])
        >>> sorted(actor(td).keys())
        ['action', 'action_log_prob', 'loc', 'observation', 'policy_id', 'scale']
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        *,
        num_policies: int = 1,
        latents: PolicyLatents | None = None,
        hidden_sizes: Sequence[int] = (256, 128, 64),
        activation: str = "elu",
        obs_normalizer: ObservationNormalizer | None = None,
        init_log_std: float = 0.0,
        input_init: str = "split",
        observation_key: NestedKey = "observation",
        policy_id_key: NestedKey = "policy_id",
        action_key: NestedKey = "action",
    ):
        backbone = _backbone(
            observation_dim, action_dim, num_policies, latents, hidden_sizes, activation, obs_normalizer, input_init
        )
        head = _GaussianHead(backbone, num_policies, action_dim, init_log_std)
        module = DirectWriteModule(head, in_keys=[observation_key, policy_id_key], out_keys=["loc", "scale"])
        super().__init__(
            module,
            in_keys=["loc", "scale"],
            out_keys=[action_key],
            distribution_class=IndependentNormal,
            return_log_prob=True,
        )
        self.num_policies = num_policies

    @property
    def head(self) -> _GaussianHead:
        return self.module[0].module

    @property
    def log_std(self) -> nn.Parameter:
        """The ``[M, action_dim]`` per-policy log-std table."""
        return self.head.log_std

    @property
    def latents(self) -> PolicyLatents | None:
        return self.head.backbone.latents

    @property
    def obs_normalizer(self) -> ObservationNormalizer | None:
        return self.head.backbone.obs_normalizer


class LatentConditionedValue(DirectWriteMixin, ValueOperator):
    """State-value critic ``V(obs, phi[policy_id])`` sharing the latent table with the actor.

    SAPG conditions the critic on the same per-policy parameters as the actor, so each
    policy gets its own value function from one network (Sec. 4.2); the leader's critic
    evaluated on followers' states is what builds the off-policy targets.

    Examples:
        >>> from tensordict import TensorDict
        >>> latents = PolicyLatents(2, 4)
        >>> critic = LatentConditionedValue(3, num_policies=2, latents=latents)
        >>> td = TensorDict({"observation": torch.randn(4, 3), "policy_id": torch.tensor([0, 0, 1, 1])}, [4])
        >>> critic(td)["state_value"].shape
        torch.Size([4, 1])
    """

    def __init__(
        self,
        observation_dim: int,
        *,
        num_policies: int = 1,
        latents: PolicyLatents | None = None,
        hidden_sizes: Sequence[int] = (256, 128, 64),
        activation: str = "elu",
        obs_normalizer: ObservationNormalizer | None = None,
        input_init: str = "split",
        observation_key: NestedKey = "observation",
        policy_id_key: NestedKey = "policy_id",
        value_key: NestedKey = "state_value",
    ):
        backbone = _backbone(observation_dim, 1, num_policies, latents, hidden_sizes, activation, obs_normalizer, input_init)
        super().__init__(backbone, in_keys=[observation_key, policy_id_key], out_keys=[value_key])
        self.num_policies = num_policies
