"""Renamed arguments (issue 19: one name per concept) still work under their old names, with a
``DeprecationWarning`` naming the new one, and build exactly what the new name builds."""
from __future__ import annotations

import importlib
import pathlib
import sys
import tempfile

import pytest
import torch
from omegaconf import OmegaConf

from torchrl_sapg import InProcessPBT, PBTMember, make_actor_critic
from torchrl_sapg.modules.recurrent import RecurrentLatentActor, RecurrentLatentValue, make_recurrent_actor_critic
from torchrl_sapg.population import PolicyEnsemble, PopulationLearner
from torchrl_sapg.runtime import renamed_argument

REPO = pathlib.Path(__file__).resolve().parents[1]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _built_twice(fn, old: dict, new: dict):
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning, match=f"use .*{next(iter(new))}=") as record:
        built_old = fn(**old)
    torch.manual_seed(0)
    built_new = fn(**new)
    return built_old, built_new, record


def test_make_actor_critic_actor_hidden_sizes():
    old, new, _ = _built_twice(lambda **kw: make_actor_critic(3, 1, num_policies=2, latent_dim=4, **kw),
                               {"actor_hidden_sizes": (8, 8)}, {"hidden_sizes": (8, 8)})
    assert _same_weights(old.actor, new.actor) and _same_weights(old.critic, new.critic)


def test_make_recurrent_actor_critic_mlp_sizes_and_critic_mlp_sizes():
    def build(**kw):
        return make_recurrent_actor_critic(3, 1, lstm_hidden=4, **kw)

    old, new, record = _built_twice(build, {"mlp_sizes": (8,), "critic_mlp_sizes": (6,)},
                                    {"hidden_sizes": (8,), "critic_hidden_sizes": (6,)})
    assert _same_weights(old.actor, new.actor) and _same_weights(old.critic, new.critic)
    messages = " ".join(str(w.message) for w in record)
    assert "use make_recurrent_actor_critic(hidden_sizes=...)" in messages
    assert "use make_recurrent_actor_critic(critic_hidden_sizes=...)" in messages


@pytest.mark.parametrize("cls, args", [(RecurrentLatentActor, (3, 1)), (RecurrentLatentValue, (3,))])
def test_recurrent_classes_mlp_sizes(cls, args):
    old, new, _ = _built_twice(lambda **kw: cls(*args, lstm_hidden=4, **kw), {"mlp_sizes": (8,)}, {"hidden_sizes": (8,)})
    assert _same_weights(old, new)


def _learner():
    ens = PolicyEnsemble(3, 1, num_members=4, hidden_sizes=(8,))
    hp = {"lr": 1e-3, "clip_epsilon": 0.2, "entropy_coeff": 0.0, "critic_coeff": 1.0, "gamma": 0.99, "lmbda": 0.95,
          "num_epochs": 1}
    return PopulationLearner(ens, hp, num_minibatches=1)


def test_inprocess_pbt_beta_mut():
    learner = _learner()
    with pytest.warns(DeprecationWarning, match=r"InProcessPBT\(beta_mut=...\) is deprecated; use InProcessPBT\(mutation_prob="):
        old = InProcessPBT(learner, {"lr": {}}, interval_frames=1, beta_mut=1.0, seed=0)
    new = InProcessPBT(learner, {"lr": {}}, interval_frames=1, mutation_prob=1.0, seed=0)
    assert old.mutation_prob == new.mutation_prob == 1.0
    with pytest.warns(DeprecationWarning, match="mutation_prob"):
        assert old.beta_mut == 1.0
    with pytest.raises(TypeError, match="beta_mut is the deprecated name of mutation_prob"):
        InProcessPBT(learner, {"lr": {}}, interval_frames=1, beta_mut=0.5, mutation_prob=0.3)


def _objective(trainer):
    return 1.0


def test_pbt_member_objective_and_objective_policy():
    with tempfile.TemporaryDirectory() as root:
        with pytest.warns(DeprecationWarning) as record:
            old = PBTMember(root, 0, interval_frames=10, objective="success", objective_policy="mean", verbose=False)
        assert {"use PBTMember(fitness_key=...)", "use PBTMember(fitness_policy=...)"} <= {
            str(w.message).split("; ")[-1].rstrip(".") for w in record}
        new = PBTMember(root, 1, interval_frames=10, fitness_key="success", fitness_policy="mean", verbose=False)
        assert (old.fitness_key, old.fitness_policy) == (new.fitness_key, new.fitness_policy) == ("success", "mean")
        with pytest.warns(DeprecationWarning, match="fitness_key"):  # a callable, as before
            member = PBTMember(root, 2, interval_frames=10, objective=_objective, verbose=False)
        assert member.fitness_fn is _objective and member.fitness_key is None
        # a decentralized.yaml written before the rename, through from_config
        cfg = OmegaConf.create({"enabled": True, "workspace": root, "member_id": 3, "interval_frames": 10,
                                "objective": "tests.test_renamed_arguments:_objective", "verbose": False})
        with pytest.warns(DeprecationWarning, match="fitness_key"):
            member = PBTMember.from_config(cfg)
        assert member.fitness_fn.__name__ == "_objective" and member.fitness_key is None
        with pytest.raises(TypeError, match="objective is the deprecated name of fitness_key"):
            PBTMember(root, 4, interval_frames=10, objective="success", fitness_key="length")


def test_renamed_argument_helper_passes_the_new_name_through():
    assert renamed_argument("f", "old", "new", None, 3) == 3


def _common():
    """recipes/common.py, imported as the recipes import it (and forgotten again if it was not loaded)."""
    path, loaded = list(sys.path), "common" in sys.modules
    sys.path.insert(0, str(REPO / "recipes"))
    try:
        return importlib.import_module("common")
    finally:
        sys.path[:] = path
        if not loaded:
            sys.modules.pop("common", None)


def test_configs_saved_before_the_pbt_switch_keep_their_mode():
    common = _common()
    old_inprocess = OmegaConf.create({"algo": {"name": "pbt", "num_policies": 4}, "pbt": {"enabled": False}})
    old_member = OmegaConf.create({"algo": {"name": "sapg"}, "pbt": {"enabled": True}})
    old_plain = OmegaConf.create({"algo": {"name": "sapg"}, "pbt": {"enabled": False}})
    assert common.pbt_mode(old_inprocess) == "inprocess" and common.algorithm(old_inprocess).population
    assert common.pbt_mode(old_member) == "decentralized" and common.algorithm(old_member).name == "sapg"
    assert common.pbt_mode(old_plain) == "off"
