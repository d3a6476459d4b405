"""Per-member batched ops of a stacked population: ``M`` members' weights stacked on a leading dim.

:func:`stacked_linear` is every member's linear layer as one batched GEMM. :func:`stacked_lstm` is
``M`` independent single-layer LSTMs (``nn.LSTM``'s recurrence, gate order i, f, g, o) over
``[M, B, T]`` sequences: a loop over time steps of one batched GEMM and a few elementwise ops, and a
hand-written backward through time (``torch.vmap`` has no batching rule for ``aten::lstm``).
Measurements: docs/pbt-inprocess.md, "Speed".
"""
from __future__ import annotations

import torch

__all__ = ["stacked_linear", "stacked_lstm"]


def stacked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x[i] @ weight[i].T + bias[i]`` for every member ``i`` as one batched GEMM: ``x`` is
    ``[M, ..., in]``, ``weight`` ``[M, out, in]``, ``bias`` ``[M, out]``.

    Examples:
        >>> x, w, b = torch.randn(2, 3, 5, 4), torch.randn(2, 6, 4), torch.randn(2, 6)
        >>> torch.allclose(stacked_linear(x, w, b)[1], torch.nn.functional.linear(x[1], w[1], b[1]), atol=1e-6)
        True
    """
    if weight.dim() != 3 or tuple(weight.shape[::2]) != (x.shape[0], x.shape[-1]) or bias.shape != weight.shape[:2]:
        raise ValueError(f"expected x [M, ..., in], weight [M, out, in] and bias [M, out]; got x {list(x.shape)}, "
                         f"weight {list(weight.shape)}, bias {list(bias.shape)}.")
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    return torch.baddbmm(bias.unsqueeze(1), flat, weight.transpose(1, 2)).reshape(*x.shape[:-1], weight.shape[1])


def _forward_steps(gates_in, w_hh_t, keep, h, c, save: bool):
    """The recurrence over time-major ``gates_in`` ``[T, M, B, 4H]``, written into preallocated
    ``[T, ...]`` buffers: ``h, c`` after every step and, when ``save``, what the backward needs
    (the sigmoids, ``tanh(g)``, the ``h, c`` entering each step, ``tanh(c)``)."""
    steps, m, b, four_h = gates_in.shape
    hidden = four_h // 4
    hs, cs = (gates_in.new_empty(steps, m, b, hidden) for _ in range(2))
    saved = tuple(gates_in.new_empty(steps, m, b, width) for width in (four_h, hidden, hidden, hidden, hidden)) \
        if save else None
    for t in range(steps):
        sig, tanh_g, h_in, c_in, tanh_c = (x[t] for x in saved) if save else (None,) * 5
        h_in = torch.mul(h, keep[t], out=h_in)  # the state entering step t, zeroed at an episode start
        c_in = torch.mul(c, keep[t], out=c_in)
        z = torch.baddbmm(gates_in[t], h_in, w_hh_t)
        sig = torch.sigmoid(z, out=sig)  # i, f, o are read from it; its g slot is unused
        tanh_g = torch.tanh(z[..., 2 * hidden:3 * hidden], out=tanh_g)
        c = torch.addcmul(sig[..., hidden:2 * hidden] * c_in, sig[..., :hidden], tanh_g, out=cs[t])
        tanh_c = torch.tanh(c, out=tanh_c)
        h = torch.mul(sig[..., 3 * hidden:], tanh_c, out=hs[t])
    return hs, cs, saved


class _StackedLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gates_in, w_hh, keep, h0, c0):
        hs, cs, saved = _forward_steps(gates_in, w_hh.transpose(1, 2), keep, h0, c0, save=True)
        ctx.save_for_backward(w_hh, keep, *saved)
        return hs, cs

    @staticmethod
    def backward(ctx, grad_h, grad_c):
        w_hh, keep, sig, tanh_g, h_prev, c_prev, tanh_c = ctx.saved_tensors
        hidden = h_prev.shape[-1]
        i, f, o = sig[..., :hidden], sig[..., hidden:2 * hidden], sig[..., 3 * hidden:]
        # for all steps at once: d c_t gets d h_t * dc_from_dh_t, and d z_t = [dc, dc, dc, dh] * dz_factor_t
        dc_from_dh = o * (1 - tanh_c * tanh_c)
        dz_factor = torch.cat([
            tanh_g * i * (1 - i),
            c_prev * f * (1 - f),
            i * (1 - tanh_g * tanh_g),
            tanh_c * o * (1 - o),
        ], dim=-1)
        f_kept = f * keep  # d c_{t-1} = d c_t * f_t, and nothing crosses an episode start
        dh_carry = torch.zeros_like(h_prev[0])
        dc_carry = torch.zeros_like(c_prev[0])
        dz = torch.empty_like(dz_factor)  # [T, M, B, 4H]
        for t in reversed(range(sig.shape[0])):
            dh = grad_h[t] + dh_carry
            dc = torch.addcmul(grad_c[t] + dc_carry, dh, dc_from_dh[t])
            torch.mul(torch.cat([dc, dc, dc, dh], dim=-1), dz_factor[t], out=dz[t])
            dh_carry = torch.bmm(dz[t], w_hh) * keep[t]
            dc_carry = dc * f_kept[t]
        m = w_hh.shape[0]
        flat_dz = dz.transpose(0, 1).reshape(m, -1, dz.shape[-1])
        flat_h = h_prev.transpose(0, 1).reshape(m, -1, hidden)
        grad_w_hh = torch.bmm(flat_dz.transpose(1, 2), flat_h)
        return dz, grad_w_hh, None, dh_carry, dc_carry


def _check_shapes(gates_in, w_hh, is_init, h0, c0) -> None:
    if gates_in.dim() != 4 or gates_in.shape[-1] % 4:
        raise ValueError(f"gates_in must be [M, B, T, 4H], got {tuple(gates_in.shape)}.")
    m, b, t, four_h = gates_in.shape
    expected = {"w_hh": (w_hh, (m, four_h, four_h // 4)), "is_init": (is_init, (m, b, t)),
                "h0": (h0, (m, b, four_h // 4)), "c0": (c0, (m, b, four_h // 4))}
    for name, (value, shape) in expected.items():
        if tuple(value.shape) != shape:
            raise ValueError(f"{name} must be {list(shape)} for gates_in {list(gates_in.shape)} ([M, B, T, 4H]), "
                             f"got {list(value.shape)}.")
    if is_init.dtype != torch.bool:
        raise ValueError(f"is_init must be a bool tensor, got {is_init.dtype}.")


def stacked_lstm(gates_in: torch.Tensor, w_hh: torch.Tensor, is_init: torch.Tensor, h0: torch.Tensor,
                 c0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every member's LSTM over its own sequences, the state after every step.

    Args:
        gates_in: ``W_ih x_t + b_ih + b_hh`` of every step, ``[M, B, T, 4H]``.
        w_hh: the stacked recurrent weights (``nn.LSTM``'s ``weight_hh_l0`` per member), ``[M, 4H, H]``.
        is_init: ``[M, B, T]`` booleans; the state entering step ``t`` is zeroed where set.
        h0, c0: the states entering step 0, ``[M, B, H]``.

    Returns:
        ``h, c`` after every step, ``[M, B, T, H]`` each (``h`` is the LSTM output).

    Examples:
        >>> lstm = torch.nn.LSTM(3, 4, batch_first=True)
        >>> x, h0, c0 = torch.randn(5, 7, 3), torch.randn(1, 5, 4), torch.randn(1, 5, 4)
        >>> gates = x @ lstm.weight_ih_l0.T + lstm.bias_ih_l0 + lstm.bias_hh_l0
        >>> h, c = stacked_lstm(gates[None], lstm.weight_hh_l0[None], torch.zeros(1, 5, 7, dtype=torch.bool), h0, c0)
        >>> torch.allclose(h[0], lstm(x, (h0, c0))[0], atol=1e-6)
        True
    """
    _check_shapes(gates_in, w_hh, is_init, h0, c0)
    keep = (~is_init).to(gates_in.dtype).permute(2, 0, 1)[..., None]  # [T, M, B, 1]
    gates_in = gates_in.permute(2, 0, 1, 3).contiguous()
    if torch.is_grad_enabled() and any(t.requires_grad for t in (gates_in, w_hh, h0, c0)):
        h, c = _StackedLSTM.apply(gates_in, w_hh, keep, h0, c0)
    else:  # collection and value estimation: nothing to keep for a backward
        h, c, _ = _forward_steps(gates_in, w_hh.transpose(1, 2), keep, h0, c0, save=False)
    return h.permute(1, 2, 0, 3), c.permute(1, 2, 0, 3)
