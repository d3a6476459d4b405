from torchrl_sapg.modules.actor_critic import LatentConditionedActor, LatentConditionedMLP, LatentConditionedValue
from torchrl_sapg.modules.factory import ActorCritic, make_actor_critic
from torchrl_sapg.modules.latents import PolicyLatents, check_policy_ids
from torchrl_sapg.modules.normalization import ObservationNormalizer
from torchrl_sapg.modules.td_module import DirectWriteMixin, DirectWriteModule, DirectWriteValueOperator

__all__ = [
    "ActorCritic",
    "DirectWriteMixin",
    "DirectWriteModule",
    "DirectWriteValueOperator",
    "LatentConditionedActor",
    "LatentConditionedMLP",
    "LatentConditionedValue",
    "ObservationNormalizer",
    "PolicyLatents",
    "check_policy_ids",
    "make_actor_critic",
]
