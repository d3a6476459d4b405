"""DirectWriteModule / DirectWriteMixin: the same outputs as TensorDictModule, without its per-output
import probe (``TensorDict.from_any`` -> ``importlib.util.find_spec("pandas")``) in the hot path."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.modules import ValueOperator

from torchrl_sapg.modules import DirectWriteModule, make_actor_critic
from torchrl_sapg.modules.recurrent import make_recurrent_actor_critic


@pytest.fixture
def probes(monkeypatch):
    """Counts the pandas probes TensorDict.from_any makes."""
    calls = []
    real = importlib.util.find_spec

    def counting(name, *args, **kwargs):
        if name == "pandas":
            calls.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", counting)
    return calls


def _batch(n=6, obs=3, m=2):
    return TensorDict({"observation": torch.randn(n, obs), "policy_id": torch.arange(n) % m}, [n])


def test_outputs_match_tensordict_module(probes):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 4)
    td = TensorDict({"x": torch.randn(5, 3)}, [5])
    reference = TensorDictModule(net, in_keys=["x"], out_keys=["y"])(td.clone())
    assert probes  # the probe this module removes really is on TensorDictModule's path
    probes.clear()
    out = DirectWriteModule(net, in_keys=["x"], out_keys=["y"])(td.clone())
    assert torch.equal(out["y"], reference["y"]) and set(out.keys()) == set(reference.keys())
    assert not probes


def test_non_tensor_outputs_and_explicit_out_take_tensordict_path(probes):
    class Pair(torch.nn.Module):
        def forward(self, x):
            return {"a": x + 1}, x * 2

    m = DirectWriteModule(Pair(), in_keys=["x"], out_keys=["d", "z"])
    out = m(TensorDict({"x": torch.ones(2, 3)}, [2]))
    assert torch.equal(out["d", "a"], torch.full((2, 3), 2.0)) and torch.equal(out["z"], torch.full((2, 3), 2.0))
    target = TensorDict({}, [2])
    lin = DirectWriteModule(torch.nn.Linear(3, 1), in_keys=["x"], out_keys=["y"])
    res = lin(TensorDict({"x": torch.ones(2, 3)}, [2]), tensordict_out=target)
    assert res is target and "y" in target.keys() and "x" not in target.keys()


def test_actor_critic_forward_makes_no_import_probe(probes):
    ac = make_actor_critic(3, 2, num_policies=2, latent_dim=4, hidden_sizes=(8,))
    td = ac.actor(_batch())
    ac.critic(td)
    assert {"loc", "scale", "action", "action_log_prob", "state_value"} <= set(td.keys())
    assert isinstance(ac.critic, ValueOperator)  # still a torchrl ValueOperator
    assert not probes


def test_recurrent_actor_critic_forward_makes_no_import_probe(probes):
    ac = make_recurrent_actor_critic(3, 2, num_policies=2, latent_dim=4, hidden_sizes=(8,), lstm_hidden=8)
    td = _batch()
    td.set("is_init", torch.ones(6, 1, dtype=torch.bool))
    ac.critic(ac.actor(td))
    assert "state_value" in td.keys()
    assert not probes
