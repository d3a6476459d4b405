"""torch.compile of the update step: no graph break, the same numbers as eager, clear errors."""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.objectives import ClipPPOLoss

from torchrl_sapg import LearningRateSchedule, OnPolicyTrainer, PopulationCollector, make_actor_critic, make_env
from torchrl_sapg.objectives import OffPolicyClipPPOLoss, SAPGLoss
from torchrl_sapg.trainers.on_policy import ClippedGradientStepper

B, M = 64, 2


def _data(ac):
    torch.manual_seed(0)
    td = TensorDict({"observation": torch.randn(B, 3), "policy_id": torch.randint(0, M, (B,))}, [B])
    td = ac.actor(td).detach()
    td.update({"advantage": torch.randn(B, 1), "value_target": torch.randn(B, 1),
               "target_log_prob": td["action_log_prob"] + 0.1 * torch.randn(B),
               "off_policy": torch.arange(B) % 4 == 0})
    return td


@pytest.mark.parametrize("loss_cls, analytic_kl", [("ClipPPOLoss", False), ("OffPolicyClipPPOLoss", True),
                                                   ("SAPGLoss", True)])
def test_the_update_step_compiles_without_a_graph_break(loss_cls, analytic_kl):
    torch.manual_seed(0)
    ac = make_actor_critic(3, 1, num_policies=M, latent_dim=4, hidden_sizes=(16,))
    loss = {"ClipPPOLoss": lambda: ClipPPOLoss(ac.actor, ac.critic),
            "OffPolicyClipPPOLoss": lambda: OffPolicyClipPPOLoss(ac.actor, ac.critic),
            "SAPGLoss": lambda: SAPGLoss(ac.actor, ac.critic, num_policies=M, entropy_sigma=0.01)}[loss_cls]()
    optim = torch.optim.Adam(loss.parameters(), lr=1e-3)
    schedule = LearningRateSchedule(optim, mode="adaptive" if analytic_kl else "fixed")
    stepper = ClippedGradientStepper(lr_schedule=schedule, kl_actor=ac.actor, compile=True)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(stepper.loss_step)(loss, _data(ac))
    assert explained.graph_break_count == 0, [str(r.reason)[:300] for r in explained.break_reasons]
    assert explained.graph_count == 1


def _trainer(compile_: bool):
    torch.manual_seed(0)
    env = make_env("pendulum", 16, seed=0, max_episode_steps=8)
    ac = make_actor_critic(3, 1, num_policies=M, latent_dim=4, hidden_sizes=(16,))
    collector = PopulationCollector(env, ac.actor, num_policies=M, frames_per_batch=16 * 8)
    # with the entropy bonus: eager and compiled both use the Gaussian's analytic entropy (ClipPPOLoss alone
    # would add a Monte-Carlo estimate under compile, drawing from the global generator)
    loss = SAPGLoss(ac.actor, ac.critic, num_policies=M, entropy_sigma=0.01, generator=torch.Generator().manual_seed(0))
    from torchrl.objectives.value import GAE

    optim = torch.optim.Adam(loss.parameters(), lr=1e-3)
    trainer = OnPolicyTrainer(collector=collector, loss_module=loss, optimizer=optim, total_frames=3 * 128, num_epochs=2,
                              num_minibatches=2, value_estimator=GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic),
                              lr_schedule=LearningRateSchedule(optim, mode="adaptive"), kl_actor=ac.actor,
                              obs_normalizers=[ac.obs_normalizer], progress_bar=False, seed=0, compile=compile_)
    trainer.register_op("batch_process", loss.aggregate)
    return trainer


def _run(compile_: bool):
    trainer = _trainer(compile_)
    trainer.train()
    return {k: v.clone() for k, v in trainer.loss_module.state_dict().items() if v.is_floating_point()}


def test_a_compiled_run_trains_like_the_eager_one():
    torch._dynamo.reset()
    eager, compiled = _run(False), _run(True)
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-4, atol=1e-5, msg=k)


def test_a_compiled_run_compiles_its_step_once():
    # Traced code guards on tensordict's class memo, which grows whenever tensordict first meets a type (the
    # trainer's loss averaging adds ``int`` at the end of the first update). Here every step of the first update
    # shows it a new class: compiled from the first step, the step would recompile at each of them.
    from tensordict.utils import is_tensorclass
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    trainer = _trainer(True)
    steps_per_update = 2 * 2  # num_epochs x num_minibatches
    fresh = []

    def show_tensordict_a_new_class():
        if trainer._optim_count <= steps_per_update:
            fresh.append(type(f"Fresh{trainer._optim_count}", (), {}))
            is_tensorclass(fresh[-1])

    trainer.register_op("post_optim", show_tensordict_a_new_class)
    graphs = counters["stats"]["unique_graphs"]
    trainer.train()
    assert len(fresh) == steps_per_update and trainer._optim_count == 3 * steps_per_update
    assert trainer.optimization_stepper.compile_warmup == steps_per_update  # the first update ran eagerly
    assert counters["stats"]["unique_graphs"] - graphs == 1


def test_compile_warmup_must_be_a_step_count():
    stepper = ClippedGradientStepper(compile=True)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="compile_warmup=.*an int >= 0"):
            stepper.compile_warmup = bad
    with pytest.raises(ValueError, match="compile_warmup=3 does nothing without compile=True"):
        ClippedGradientStepper(compile_warmup=3)


def test_compile_without_a_cpp_compiler_fails_at_construction(monkeypatch):
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/g++",))  # a machine without a C++ compiler
    ac = make_actor_critic(3, 1)
    loss = ClipPPOLoss(ac.actor, ac.critic)
    collector = PopulationCollector(make_env("pendulum", 4, seed=0), ac.actor, num_policies=1, frames_per_batch=8)
    kwargs = dict(collector=collector, loss_module=loss, optimizer=torch.optim.Adam(loss.parameters()),
                  total_frames=8, num_epochs=1, num_minibatches=1, progress_bar=False)
    with pytest.raises(RuntimeError, match="compile=True on CPU needs a C\\+\\+ compiler.*train.compile=false"):
        OnPolicyTrainer(compile=True, **kwargs)
    OnPolicyTrainer(compile={"backend": "aot_eager"}, **kwargs)  # no C++ kernels: nothing to check
    OnPolicyTrainer(compile=False, **kwargs)


def test_cudagraphs_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    ac = make_actor_critic(3, 1)
    loss = ClipPPOLoss(ac.actor, ac.critic)
    collector = PopulationCollector(make_env("pendulum", 4, seed=0), ac.actor, num_policies=1, frames_per_batch=8)
    with pytest.raises(ValueError, match="cudagraphs=True needs the loss on a CUDA device.*compile=True alone"):
        OnPolicyTrainer(collector=collector, loss_module=loss, optimizer=torch.optim.Adam(loss.parameters()),
                        total_frames=8, num_epochs=1, num_minibatches=1, cudagraphs=True, progress_bar=False)
