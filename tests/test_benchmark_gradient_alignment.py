"""benchmarks/sapg_gradient_alignment.py on a tiny recipe checkpoint: the surrogate gradient it
measures is the importance-weighted policy gradient mu·A·grad log pi at theta_old, and every
estimator is measured on the same relabelled rows."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import sapg_gradient_alignment as alignment  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("align") / "run"
    res = subprocess.run(
        [sys.executable, "recipes/train.py", "algo=sapg", "env=pendulum", "env.num_envs=24", "train.horizon=16",
         "total_frames=1152", "algo.num_policies=3", "algo.latent_dim=4", "algo.off_policy_ratio=2.0",
         "model.hidden_sizes=[16]", "progress_bar=false", "threads=1", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir / "checkpoints" / "last.pt"


def test_surrogate_gradient_is_the_importance_weighted_policy_gradient(checkpoint):
    from omegaconf import OmegaConf
    from common import build_agent, build_env, build_loss
    from torchrl.objectives.value import GAE

    from torchrl_sapg.trainers import load_checkpoint

    state = load_checkpoint(checkpoint)
    cfg = OmegaConf.create(state["extra"]["config"])
    env = build_env(cfg, seed=0)
    loss, _ = build_loss(cfg, build_agent(cfg, env))
    loss.load_state_dict(state["trainer"]["loss_module"])
    batch = alignment.collect(env, loss, 3, 24 * 16)
    with loss.critic_network_params.to_module(loss.critic_network), torch.no_grad():
        batch = GAE(gamma=0.99, lmbda=0.95, value_network=loss.critic_network, average_gae=False)(batch)
    data = loss.aggregate(batch)
    off = data[data["off_policy"][:, 0]].reshape(-1)
    grads = alignment.LeaderGradients(loss)
    measured = grads.surrogate_gradient(off)
    # by hand: -mean(mu · A · log pi_theta(a|s)) with mu detached (at theta_old r = mu: inside mu(1 ± eps))
    actor = loss.actor_network
    with loss.actor_network_params.to_module(actor):
        log_prob = actor.get_dist(off.copy()).log_prob(off["action"])
    mu = (off["target_log_prob"] - off["action_log_prob"]).exp().reshape(log_prob.shape)
    assert not torch.allclose(mu, torch.ones_like(mu), atol=1e-3), "leader and followers differ"
    hand = torch.autograd.grad(-(mu * off["advantage"].reshape(log_prob.shape) * log_prob).mean(), grads.params, allow_unused=True)
    hand = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(hand, grads.params)])
    torch.testing.assert_close(measured, hand, rtol=1e-4, atol=1e-6)
    assert float(measured.norm()) > 0


def test_benchmark_runs_every_estimator_on_the_same_rows_and_writes_json(checkpoint, tmp_path):
    out = tmp_path / "align.json"
    threads = torch.get_num_threads()
    try:
        result = alignment.main([
            "--checkpoint", str(checkpoint), "--episodes", "8", "--episode-steps", "20", "--batches", "2",
            "--burn-in", "1", "--estimators", "td0", "gae:0.95", "--threads", "1", "--out", str(out),
        ])
    finally:
        torch.set_num_threads(threads)
    data = json.loads(out.read_text())
    assert [r["gradient"] for r in data["rows"]] == ["own rows", "td0", "gae lambda=0.95"]
    assert data["rows"] == json.loads(json.dumps(result["rows"]))
    for r in data["rows"]:
        assert -1.0 <= r["cos_reference"] <= 1.0 and r["norm_per_batch"] > 0
    assert data["config"]["num_policies"] == 3
    with pytest.raises(SystemExit, match="td0, vtrace or gae"):
        alignment.parse_estimator("retrace:0.9")
