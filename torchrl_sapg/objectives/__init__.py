from torchrl_sapg.objectives.off_policy_ppo import OffPolicyClipPPOLoss
from torchrl_sapg.objectives.kl import gaussian_kl, gaussian_kl_from_dist
from torchrl_sapg.objectives.member_ppo import PopulationPPOLoss
from torchrl_sapg.objectives.sapg import SAPGLoss, sapg_entropy_coeffs
from torchrl_sapg.objectives.value import (bootstrap_steps, estimate_values, n_step_return, shifted_budget,
                                           values_and_next, vtrace_lambda_target)

__all__ = ["OffPolicyClipPPOLoss", "PopulationPPOLoss", "SAPGLoss", "bootstrap_steps", "estimate_values", "gaussian_kl",
           "gaussian_kl_from_dist", "n_step_return", "sapg_entropy_coeffs", "shifted_budget", "values_and_next",
           "vtrace_lambda_target"]
