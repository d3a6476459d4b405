"""``stacked_lstm``: M independent LSTMs with a hand-written backward through time (and ``stacked_linear``).

Checked in float64 against ``torch.nn.LSTM`` run member by member and segment by segment (the
state zeroed where ``is_init`` is set), values and gradients of every input, and against
``torch.autograd.gradcheck``; the autograd graph is one node whatever the sequence length.
"""
from __future__ import annotations

import pytest
import torch

from torchrl_sapg.population.pbt_inprocess.stacked_ops import stacked_linear, stacked_lstm

M, B, T, IN, H = 3, 4, 7, 5, 6
DT = torch.float64


def _members(seed=0):
    torch.manual_seed(seed)
    return [torch.nn.LSTM(IN, H, batch_first=True).to(DT) for _ in range(M)]


def _inputs(seed=1, reset_prob=0.3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, B, T, IN, dtype=DT, generator=g)
    is_init = torch.rand(M, B, T, generator=g) < reset_prob
    h0 = torch.randn(M, B, H, dtype=DT, generator=g)
    c0 = torch.randn(M, B, H, dtype=DT, generator=g)
    return x, is_init, h0, c0


def _stacked(lstms, x, is_init, h0, c0):
    w_ih = torch.stack([m.weight_ih_l0 for m in lstms])
    bias = torch.stack([m.bias_ih_l0 + m.bias_hh_l0 for m in lstms])
    gates = torch.einsum("mbti,mgi->mbtg", x, w_ih) + bias[:, None, None]
    return stacked_lstm(gates, torch.stack([m.weight_hh_l0 for m in lstms]), is_init, h0, c0)


def _reference(lstms, x, is_init, h0, c0):
    """``nn.LSTM`` per member and env-row, one call per segment between resets: ``h, c`` after every step."""
    hs, cs = [[[None] * T for _ in range(B)] for _ in range(M)], [[[None] * T for _ in range(B)] for _ in range(M)]
    for i, lstm in enumerate(lstms):
        for b in range(B):
            h, c = h0[i, b][None, None], c0[i, b][None, None]
            starts = [0] + [t for t in range(1, T) if is_init[i, b, t]] + [T]
            for s, e in zip(starts[:-1], starts[1:]):
                if is_init[i, b, s]:
                    h, c = torch.zeros_like(h), torch.zeros_like(c)
                for t in range(s, e):  # step by step, so the state after every step is seen
                    _, (h, c) = lstm(x[i, b, t][None, None], (h, c))
                    hs[i][b][t], cs[i][b][t] = h[0, 0], c[0, 0]
    stack = lambda z: torch.stack([torch.stack([torch.stack(row) for row in member]) for member in z])  # noqa: E731
    return stack(hs), stack(cs)


def test_values_equal_nn_lstm_per_member_with_resets():
    lstms = _members()
    x, is_init, h0, c0 = _inputs()
    assert is_init.any() and (~is_init).any()
    with torch.no_grad():
        h, c = _stacked(lstms, x, is_init, h0, c0)
        ref_h, ref_c = _reference(lstms, x, is_init, h0, c0)
    torch.testing.assert_close(h, ref_h, rtol=0, atol=1e-12)
    torch.testing.assert_close(c, ref_c, rtol=0, atol=1e-12)
    # without resets, one nn.LSTM call over the whole sequence gives the same outputs
    no_reset = torch.zeros_like(is_init)
    with torch.no_grad():
        h, _ = _stacked(lstms, x, no_reset, h0, c0)
        for i, lstm in enumerate(lstms):
            out, _ = lstm(x[i], (h0[i][None], c0[i][None]))
            torch.testing.assert_close(h[i], out, rtol=0, atol=1e-12)


@pytest.mark.parametrize("use_c", [True, False], ids=["h_and_c_read", "h_only"])
def test_gradients_equal_autograd_through_nn_lstm(use_c):
    x, is_init, h0, c0 = _inputs(seed=2)
    weights_h = torch.randn(M, B, T, H, dtype=DT)
    weights_c = torch.randn(M, B, T, H, dtype=DT)

    def grads(fn):
        lstms = _members()
        xs, h0s, c0s = (t.clone().requires_grad_() for t in (x, h0, c0))
        h, c = fn(lstms, xs, is_init, h0s, c0s)
        loss = (h * weights_h).sum() + ((c * weights_c).sum() if use_c else 0)
        params = [p for m in lstms for p in (m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)]
        return torch.autograd.grad(loss, [xs, h0s, c0s, *params])

    for mine, ref in zip(grads(_stacked), grads(_reference)):
        torch.testing.assert_close(mine, ref, rtol=0, atol=1e-10)


def test_gradcheck():
    x, is_init, h0, c0 = _inputs(seed=3, reset_prob=0.25)
    gates = torch.randn(M, B, T, 4 * H, dtype=DT, requires_grad=True)
    w_hh = (0.5 * torch.randn(M, 4 * H, H, dtype=DT)).requires_grad_()
    h0, c0 = h0.requires_grad_(), c0.requires_grad_()
    assert torch.autograd.gradcheck(lambda g, w, h, c: stacked_lstm(g, w, is_init, h, c), (gates, w_hh, h0, c0))


def _graph_nodes(grad_fn) -> int:
    seen, stack = set(), [grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(n for n, _ in node.next_functions)
    return len(seen)


def test_backward_is_one_graph_node_whatever_the_length():
    gates = torch.randn(2, 3, 16, 4 * H, requires_grad=True)
    w_hh = torch.randn(2, 4 * H, H, requires_grad=True)
    h0 = torch.zeros(2, 3, H)
    nodes = []
    for t in (2, 16):
        h, _ = stacked_lstm(gates[:, :, :t], w_hh, torch.zeros(2, 3, t, dtype=torch.bool), h0, h0)
        nodes.append(_graph_nodes(h.grad_fn))
    assert nodes[0] == nodes[1] <= 8


@pytest.mark.parametrize("name, bad, match", [
    ("gates_in", lambda g, w, i, h, c: (g[..., :-1], w, i, h, c), r"gates_in must be \[M, B, T, 4H\]"),
    ("w_hh", lambda g, w, i, h, c: (g, w.transpose(1, 2), i, h, c), r"w_hh must be \[3, 24, 6\]"),
    ("is_init", lambda g, w, i, h, c: (g, w, i[:, :, :-1], h, c), r"is_init must be \[3, 4, 7\]"),
    ("is_init dtype", lambda g, w, i, h, c: (g, w, i.float(), h, c), r"is_init must be a bool tensor"),
    ("h0", lambda g, w, i, h, c: (g, w, i, h[:, :-1], c), r"h0 must be \[3, 4, 6\]"),
    ("c0", lambda g, w, i, h, c: (g, w, i, h, c[..., :-1]), r"c0 must be \[3, 4, 6\]"),
])
def test_wrong_shapes_name_the_argument(name, bad, match):
    _, is_init, h0, c0 = _inputs()
    args = (torch.randn(M, B, T, 4 * H, dtype=DT), torch.randn(M, 4 * H, H, dtype=DT), is_init, h0, c0)
    with pytest.raises(ValueError, match=match):
        stacked_lstm(*bad(*args))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_values_and_gradients_equal_cpu():
    _, is_init, h0, c0 = _inputs(seed=4)
    gates = torch.randn(M, B, T, 4 * H)
    w_hh = 0.5 * torch.randn(M, 4 * H, H)
    weight = torch.randn(M, B, T, H)

    def run(device):
        args = [t.float().to(device).requires_grad_() for t in (gates, w_hh, h0, c0)]
        h, c = stacked_lstm(args[0], args[1], is_init.to(device), args[2], args[3])
        grads = torch.autograd.grad((h * weight.to(device)).sum() + c.sum(), args)
        return [t.cpu() for t in (h, c, *grads)]

    for on_gpu, on_cpu in zip(run("cuda"), run("cpu")):
        torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-4, atol=1e-5)


def test_stacked_linear_is_each_members_linear_layer_and_checks_shapes():
    x, w, b = torch.randn(M, B, T, IN, dtype=DT), torch.randn(M, H, IN, dtype=DT), torch.randn(M, H, dtype=DT)
    out = stacked_linear(x, w, b)
    for i in range(M):
        torch.testing.assert_close(out[i], x[i] @ w[i].T + b[i], rtol=0, atol=1e-12)
    for bad in ((x, w[:-1], b[:-1]), (x, w.transpose(1, 2), b), (x, w, b[:, :-1]), (x, w[0], b)):
        with pytest.raises(ValueError, match=r"expected x \[M, \.\.\., in\], weight \[M, out, in\] and bias \[M, out\]"):
            stacked_linear(*bad)
