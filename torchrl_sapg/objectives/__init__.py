from torchrl_sapg.objectives.off_policy_ppo import OffPolicyClipPPOLoss
from torchrl_sapg.objectives.sapg import SAPGLoss, n_step_return, sapg_entropy_coeffs, vtrace_lambda_target

__all__ = ["OffPolicyClipPPOLoss", "SAPGLoss", "n_step_return", "sapg_entropy_coeffs", "vtrace_lambda_target"]
