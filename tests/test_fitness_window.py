"""PolicyFitnessWindow: number checks against hand computations, and old checkpoint keys."""
import math

import pytest
import torch
from tensordict import TensorDict

from torchrl_sapg.population.fitness import PolicyFitnessWindow


def _batch(pid, done, value, off_policy=None):
    """An ``[N, T]`` batch with ``policy_id``, ``("next", "done")`` and ``("next", "episode_reward")``."""
    pid, done, value = torch.tensor(pid), torch.tensor(done), torch.tensor(value, dtype=torch.float32)
    td = TensorDict(
        {"policy_id": pid, "next": {"done": done.unsqueeze(-1), "episode_reward": value.unsqueeze(-1)}},
        batch_size=pid.shape,
    )
    if off_policy is not None:
        td["off_policy"] = torch.tensor(off_policy)
    return td


def test_sums_counts_and_mean_by_hand():
    w = PolicyFitnessWindow(3)
    # policy 0: episodes 1 and 3 end; policy 1: none ends (value 100 is ignored); policy 2: 5
    batch = _batch(
        pid=[[0, 0], [1, 1], [2, 2]],
        done=[[True, True], [False, False], [False, True]],
        value=[[1.0, 3.0], [100.0, 100.0], [-7.0, 5.0]],
    )
    w.observe(batch, ("next", "episode_reward"))
    assert w.sums.tolist() == [4.0, 0.0, 5.0]
    assert w.counts.tolist() == [2.0, 0.0, 1.0]
    mean = w.mean()
    assert mean[0].item() == 2.0 and mean[2].item() == 5.0
    assert math.isnan(mean[1].item())  # no episode: NaN
    assert w.sums.dtype == torch.float64


def test_empty_policy_value_is_configurable():
    w = PolicyFitnessWindow(2, empty_value=-1.0)
    w.add(torch.tensor([1]), torch.tensor([2.5]), torch.tensor([True]))
    assert w.mean().tolist() == [-1.0, 2.5]


def test_decay_by_hand():
    w = PolicyFitnessWindow(2, decay=0.5)
    w.add(torch.tensor([0, 1]), torch.tensor([4.0, 2.0]), torch.tensor([True, True]))
    w.add(torch.tensor([0, 0]), torch.tensor([10.0, 6.0]), torch.tensor([True, False]))
    # sums: [4 * 0.5 + 10, 2 * 0.5] = [12, 1]; counts: [1 * 0.5 + 1, 0.5] = [1.5, 0.5]
    assert w.sums.tolist() == [12.0, 1.0]
    assert w.counts.tolist() == [1.5, 0.5]
    assert w.mean().tolist() == pytest.approx([8.0, 2.0])


def test_off_policy_rows_are_filtered():
    batch = _batch(pid=[[0], [0], [1]], done=[[True], [True], [True]], value=[[1.0], [50.0], [3.0]],
                   off_policy=[[False], [True], [False]])
    w = PolicyFitnessWindow(2)
    w.observe(batch, ("next", "episode_reward"))
    assert w.sums.tolist() == [1.0, 3.0] and w.counts.tolist() == [1.0, 1.0]
    unfiltered = PolicyFitnessWindow(2, off_policy_key=None)
    unfiltered.observe(batch, ("next", "episode_reward"))
    assert unfiltered.sums.tolist() == [51.0, 3.0] and unfiltered.counts.tolist() == [2.0, 1.0]


def test_mask_and_missing_policy_column():
    batch = _batch(pid=[[0, 0]], done=[[True, True]], value=[[2.0, 8.0]])
    w = PolicyFitnessWindow(1)
    w.observe(batch, ("next", "episode_reward"), mask=torch.tensor([[False, True]]))
    assert (w.sums.item(), w.counts.item()) == (8.0, 1.0)
    del batch["policy_id"]  # no policy ids: everything counts for policy 0
    w2 = PolicyFitnessWindow(1)
    w2.observe(batch, ("next", "episode_reward"))
    assert (w2.sums.item(), w2.counts.item()) == (10.0, 2.0)


def test_reset_and_sync_hook():
    class FakeSync:  # doubles every batch total (two identical ranks), broadcasts as is
        def sum_(self, tensors):
            for t in tensors:
                t.mul_(2)
            return tensors

        def broadcast_(self, tensors, src=0):
            return tensors

    w = PolicyFitnessWindow(3, sync=FakeSync())
    w.add(torch.tensor([0, 1, 2]), torch.tensor([1.0, 2.0, 3.0]), torch.tensor([True, True, True]))
    assert w.sums.tolist() == [2.0, 4.0, 6.0] and w.counts.tolist() == [2.0, 2.0, 2.0]
    w.reset([1])
    assert w.sums.tolist() == [2.0, 0.0, 6.0] and w.counts.tolist() == [2.0, 0.0, 2.0]
    w.reset()
    assert w.sums.tolist() == [0.0, 0.0, 0.0] and w.counts.tolist() == [0.0, 0.0, 0.0]


def test_state_dict_round_trip_and_old_formats():
    w = PolicyFitnessWindow(2)
    w.add(torch.tensor([0, 1]), torch.tensor([1.0, 2.0]), torch.tensor([True, False]))
    state = w.state_dict(prefix="fit_")
    assert set(state) == {"fit_sum", "fit_count"}  # EPO's keys before the window existed
    other = PolicyFitnessWindow(2)
    other.load_state_dict(state, prefix="fit_")
    assert other.sums.tolist() == [1.0, 0.0] and other.counts.tolist() == [1.0, 0.0]
    other.load_state_dict({"sum": torch.tensor([5.0, 6.0], dtype=torch.float64),
                           "count": torch.tensor([1.0, 2.0], dtype=torch.float64)})  # in-process PBT's keys
    assert other.mean().tolist() == [5.0, 3.0]
    other.load_state_dict((torch.tensor([2.0, 0.0], dtype=torch.float64),
                           torch.tensor([1.0, 0.0], dtype=torch.float64)))  # decentralised PBT's pair
    assert other.sums.tolist() == [2.0, 0.0]


def test_pre_change_checkpoints_load_into_the_hooks(tmp_path):
    """State dicts in the format the three classes wrote before they shared the window."""
    from torchrl_sapg.modules import PolicyLatents
    from torchrl_sapg.population import GeneticLatentScheduler, InProcessPBT, PBTMember, PolicyEnsemble, PopulationLearner

    epo = GeneticLatentScheduler(latents=PolicyLatents(4, 2), seed=0)
    state = epo.state_dict()
    assert {"fit_sum", "fit_count", "since"} <= set(state)
    state["fit_sum"] = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    state["fit_count"] = torch.tensor([1.0, 1.0, 2.0, 0.0], dtype=torch.float64)
    epo.load_state_dict(state)
    assert epo.fitness().tolist()[:3] == [1.0, 2.0, 1.5] and math.isnan(epo.fitness()[3].item())

    ens = PolicyEnsemble(3, 1, num_members=2, hidden_sizes=(4,))
    learner = PopulationLearner(ens, {"lr": 1e-3, "clip_epsilon": 0.2, "entropy_coeff": 0.0, "critic_coeff": 1.0,
                                      "gamma": 0.99, "lmbda": 0.95, "num_epochs": 1}, num_minibatches=1)
    pbt = InProcessPBT(learner, {"lr": {"kind": "multiplicative"}}, interval_frames=1)
    old = {"sum": torch.tensor([3.0, 0.0], dtype=torch.float64), "count": torch.tensor([2.0, 0.0], dtype=torch.float64),
           "last_step_frames": 5, "last_change": [0, 0], "num_steps": 1, "rng": pbt.rng.getstate(), "last_report": {}}
    pbt.load_state_dict(old)
    assert pbt.fitness()[0].item() == 1.5 and math.isnan(pbt.fitness()[1].item())
    assert set(pbt.state_dict()) == set(old)

    member = PBTMember(tmp_path, 0, hyperparameters={}, interval_frames=10, verbose=False)
    state = member.state_dict()
    assert state["window"] is None
    state["window"] = (torch.tensor([6.0], dtype=torch.float64), torch.tensor([3.0], dtype=torch.float64))
    member.load_state_dict(state)
    assert member.compute_objective() == 2.0
    saved = member.state_dict()["window"]
    assert isinstance(saved, tuple) and saved[0].tolist() == [6.0]
