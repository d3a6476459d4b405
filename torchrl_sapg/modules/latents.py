"""Per-policy learned latents phi (SAPG Sec. 4.2, EPO Sec. 3: the agents' "genes")."""
from __future__ import annotations

import torch
from torch import nn
from torch._C._functorch import is_functorch_wrapped_tensor


def check_policy_ids(policy_id: torch.Tensor, num_policies: int, *, name: str = "policy_id") -> None:
    """Raise if any id lies outside ``[0, num_policies)`` or is not an integer tensor.

    On CPU this raises a ``ValueError`` at once. On an accelerator the check is queued with
    ``torch._assert_async`` so it never forces a host sync in the hot path; a bad id then
    surfaces as a device-side assertion at the next synchronisation.

    Examples:
        >>> check_policy_ids(torch.tensor([0, 1, 2]), 3)
        >>> check_policy_ids(torch.tensor([3]), 3)
        Traceback (most recent call last):
        ...
        ValueError: policy_id holds ids outside [0, 3) (min 3, max 3): ...
    """
    if policy_id.dtype.is_floating_point or policy_id.dtype == torch.bool:
        raise TypeError(
            f"{name} must be an integer tensor (int64), got {policy_id.dtype}. Ids are never "
            "floats matched by equality; write them with PolicyIdTransform."
        )
    if torch.compiler.is_compiling() or policy_id.numel() == 0 or is_functorch_wrapped_tensor(policy_id):
        # inside torch.vmap / torch.func (TorchRL's value estimators vmap the critic) a host-side
        # check is impossible, and under torch.compile it would break the graph; those calls
        # re-evaluate ids already checked at collection
        return
    if policy_id.device.type == "cpu":
        lo, hi = (int(v) for v in torch.aminmax(policy_id))
        if lo < 0 or hi >= num_policies:
            raise ValueError(
                f"{name} holds ids outside [0, {num_policies}) (min {lo}, max {hi}): the module "
                f"was built for num_policies={num_policies}. Build it with the env's number of "
                "policies, or fix the ids written by PolicyIdTransform."
            )
    else:
        torch._assert_async(
            ((policy_id >= 0) & (policy_id < num_policies)).all(),
            f"{name} holds ids outside [0, {num_policies})",
        )


class PolicyLatents(nn.Module):
    """A learned table ``phi`` of shape ``[num_policies, latent_dim]``, looked up by policy id.

    SAPG conditions one shared backbone on a learned per-policy parameter vector phi_j
    (Sec. 4.2); EPO calls these vectors genes and evolves them (Sec. 3.2). The table is an
    ``nn.Parameter`` so the optimiser trains it; EPO's genetic step writes new rows in place.
    ``latent_dim=0`` gives an empty table (plain, unconditioned networks).

    Args:
        num_policies: ``M``, the number of rows.
        latent_dim: size of each latent (16 or 32 in the paper).
        init_std: rows are drawn from ``N(0, init_std^2)``.
        generator: optional ``torch.Generator`` for the initial draw.

    Examples:
        >>> latents = PolicyLatents(num_policies=4, latent_dim=8)
        >>> latents(torch.tensor([0, 3, 3])).shape
        torch.Size([3, 8])
    """

    def __init__(
        self,
        num_policies: int,
        latent_dim: int,
        *,
        init_std: float = 1.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if num_policies < 1:
            raise ValueError(f"num_policies must be >= 1, got {num_policies}.")
        if latent_dim < 0:
            raise ValueError(f"latent_dim must be >= 0, got {latent_dim}.")
        self.num_policies = num_policies
        self.latent_dim = latent_dim
        self.weight = nn.Parameter(torch.randn(num_policies, latent_dim, generator=generator) * init_std)

    def forward(self, policy_id: torch.Tensor) -> torch.Tensor:
        check_policy_ids(policy_id, self.num_policies)
        return torch.nn.functional.embedding(policy_id, self.weight)

    def extra_repr(self) -> str:
        return f"num_policies={self.num_policies}, latent_dim={self.latent_dim}"
