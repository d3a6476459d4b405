from torchrl_sapg.objectives.off_policy_ppo import OffPolicyClipPPOLoss
from torchrl_sapg.objectives.sapg import SAPGLoss, n_step_return, sapg_entropy_coeffs

__all__ = ["OffPolicyClipPPOLoss", "SAPGLoss", "n_step_return", "sapg_entropy_coeffs"]
