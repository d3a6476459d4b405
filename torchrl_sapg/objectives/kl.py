"""Analytic KL between the behaviour policy stored in a batch and the current diagonal-Gaussian policy."""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

__all__ = ["gaussian_kl", "gaussian_kl_from_dist", "gaussian_kl_per_row", "gaussian_kl_rows"]


def gaussian_kl(
    actor,
    batch: TensorDictBase,
    *,
    loc_key: NestedKey = "loc",
    scale_key: NestedKey = "scale",
    mask_key: NestedKey | None = "off_policy",
    reduction: str = "mean",
    policy_id_key: NestedKey = "policy_id",
    num_policies: int | None = None,
) -> torch.Tensor:
    """Analytic KL(pi_old || pi_theta) of diagonal Gaussians over ``batch``'s rows.

    ``pi_old`` is read from the ``loc``/``scale`` the behaviour policy stored at collection;
    ``pi_theta`` is ``actor``'s current distribution. Rows flagged ``mask_key`` (SAPG's
    relabelled off-policy rows, whose stored distribution is another policy's) are excluded.
    ``reduction="mean"`` is the mean over rows, the KL rl_games and rsl_rl feed their adaptive
    learning rate; ``"max_policy"`` is the largest of the per-policy means (rows grouped by
    ``policy_id_key``, ``num_policies`` groups; no host sync). With M policies sharing one
    optimiser, the mean lets one policy (the SAPG leader, trained on its own and the followers'
    rows) move far while the others barely move; the maximum holds every policy to the
    threshold. With one policy the two are equal.

    Examples:
        >>> from tensordict import TensorDict
        >>> from torchrl_sapg.modules import make_actor_critic
        >>> actor = make_actor_critic(3, 1).actor
        >>> td = actor(TensorDict({"observation": torch.randn(8, 3), "policy_id": torch.zeros(8, dtype=torch.long)}, [8]))
        >>> float(gaussian_kl(actor, td))  # same parameters: zero
        0.0
        >>> with torch.no_grad():
        ...     _ = actor.log_std.add_(0.5)
        >>> round(float(gaussian_kl(actor, td)), 4)  # log(e^0.5) + 1/(2 e) - 1/2
        0.1839
        >>> pop = make_actor_critic(3, 1, num_policies=2, latent_dim=2).actor
        >>> ids = torch.tensor([0, 0, 0, 1])
        >>> td = pop(TensorDict({"observation": torch.randn(4, 3), "policy_id": ids}, [4]))
        >>> with torch.no_grad():
        ...     _ = pop.log_std[1].add_(0.5)  # only policy 1 (one row of four) moved
        >>> round(float(gaussian_kl(pop, td)), 4), round(float(gaussian_kl(pop, td, reduction="max_policy", num_policies=2)), 4)
        (0.046, 0.1839)
    """
    with torch.no_grad():
        # on a shallow copy: the actor writes its own loc/scale, which must not replace the stored ones
        dist = actor.get_dist(batch.copy())
        return gaussian_kl_from_dist(dist, batch, loc_key=loc_key, scale_key=scale_key, mask_key=mask_key,
                                     reduction=reduction, policy_id_key=policy_id_key, num_policies=num_policies)


def gaussian_kl_from_dist(
    dist,
    batch: TensorDictBase,
    *,
    loc_key: NestedKey = "loc",
    scale_key: NestedKey = "scale",
    mask_key: NestedKey | None = "off_policy",
    reduction: str = "mean",
    policy_id_key: NestedKey = "policy_id",
    num_policies: int | None = None,
) -> torch.Tensor:
    """:func:`gaussian_kl` with the current distribution already computed (a loss's own forward pass).

    Args:
        dist: the current policy's diagonal Gaussian on ``batch``'s rows (``mean`` and ``stddev``).
        batch: the rows, holding the behaviour policy's ``loc_key`` / ``scale_key``.
        loc_key, scale_key, mask_key, reduction, policy_id_key, num_policies: as :func:`gaussian_kl`.
    """
    keep = None
    if mask_key is not None and mask_key in batch.keys(True, True):
        keep = ~batch.get(mask_key)
    ids = batch.get(policy_id_key) if reduction == "max_policy" else None
    return gaussian_kl_rows(batch.get(loc_key), batch.get(scale_key), dist.mean, dist.stddev, keep=keep,
                            policy_id=ids, reduction=reduction, num_policies=num_policies)


def gaussian_kl_per_row(old_loc: torch.Tensor, old_scale: torch.Tensor, new_loc: torch.Tensor,
                        new_scale: torch.Tensor) -> torch.Tensor:
    """Analytic KL(old || new) of diagonal Gaussians per row: ``[..., action_dim]`` -> ``[...]`` (no gradient).

    Args:
        old_loc: the behaviour policy's mean.
        old_scale: the behaviour policy's standard deviation.
        new_loc: the current policy's mean.
        new_scale: the current policy's standard deviation.

    Examples:
        >>> one = torch.ones(2, 1)
        >>> gaussian_kl_per_row(0 * one, one, 0 * one, one).tolist()
        [0.0, 0.0]
    """
    with torch.no_grad():
        new_loc, new_scale = new_loc.detach(), new_scale.detach()
        return (torch.log(new_scale / old_scale)
                + (old_scale.pow(2) + (old_loc - new_loc).pow(2)) / (2 * new_scale.pow(2))
                - 0.5).sum(-1)


def gaussian_kl_rows(
    old_loc: torch.Tensor,
    old_scale: torch.Tensor,
    new_loc: torch.Tensor,
    new_scale: torch.Tensor,
    *,
    keep: torch.Tensor | None = None,
    policy_id: torch.Tensor | None = None,
    reduction: str = "mean",
    num_policies: int | None = None,
) -> torch.Tensor:
    """The reduced analytic KL(old || new) of diagonal Gaussians given as tensors ``[..., action_dim]``.

    Args:
        old_loc, old_scale: the behaviour policy's mean and standard deviation.
        new_loc, new_scale: the current policy's (no gradient flows).
        keep: bool ``[...]`` of the rows that count (``None``: all).
        policy_id: ``[...]`` ids, for ``reduction="max_policy"``.
        reduction, num_policies: as :func:`gaussian_kl`.

    Examples:
        >>> one = torch.ones(2, 1)
        >>> round(float(gaussian_kl_rows(0 * one, one, 0 * one, one.exp())), 4)  # log(e) + 1/(2 e^2) - 1/2
        0.5677
    """
    with torch.no_grad():
        kl = gaussian_kl_per_row(old_loc, old_scale, new_loc, new_scale)
        keep = torch.ones_like(kl) if keep is None else keep.reshape(kl.shape).to(kl.dtype)
        if reduction == "mean":
            return (kl * keep).sum() / keep.sum().clamp_min(1)
        if reduction != "max_policy":
            raise ValueError(f"reduction={reduction!r}: choose 'mean' or 'max_policy'.")
        if num_policies is None:
            raise ValueError("reduction='max_policy' needs num_policies (the number of policy ids).")
        ids = policy_id.reshape(kl.shape).flatten()
        # each policy's KL sum and row count in one scatter-add
        sums = kl.new_zeros(num_policies, 2).index_add_(0, ids, torch.stack([kl * keep, keep], -1).reshape(-1, 2))
        return (sums[:, 0] / sums[:, 1].clamp_min(1)).max()  # a policy without rows in the minibatch counts 0
