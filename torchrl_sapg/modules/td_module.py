"""TensorDict modules that write their tensor outputs straight into the TensorDict.

``tensordict.nn.TensorDictModule`` passes every output through ``TensorDict.from_any``, which in
the pinned tensordict probes the import system for pandas (``importlib.util.find_spec``) before
returning a plain tensor unchanged. A policy's and a critic's forward run once per env step and
once per minibatch, so the probe is paid thousands of times per iteration. The classes here write
plain tensors with ``TensorDict.set``, the same result, and hand anything else (a tuple, a dict, a
TensorDict, a non-default ``tensordict_out``) to TensorDict's own path. The cost is measured in
``docs/throughput.md`` ("What changed in the learner", fifth round).
"""
from __future__ import annotations

from typing import Iterable

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from tensordict.utils import NestedKey
from torchrl.modules import ValueOperator

__all__ = ["DirectWriteMixin", "DirectWriteModule", "DirectWriteValueOperator"]


class DirectWriteMixin:
    """Mixin for a ``TensorDictModule`` subclass: plain tensor outputs are written with ``set``.

    Identical output to ``TensorDictModule``'s (``TensorDict.from_any`` returns a plain tensor
    unchanged), without its per-output import probe. Put it before the ``TensorDictModule``
    class in the bases.

    Examples:
        >>> from tensordict import TensorDict
        >>> class Module(DirectWriteMixin, TensorDictModule):
        ...     pass
        >>> m = Module(torch.nn.Linear(3, 2), in_keys=["x"], out_keys=["y"])
        >>> m(TensorDict({"x": torch.ones(4, 3)}, [4]))["y"].shape
        torch.Size([4, 2])
    """

    def _write_to_tensordict(
        self,
        tensordict: TensorDictBase,
        tensors: list[torch.Tensor],
        tensordict_out: TensorDictBase | None = None,
        out_keys: Iterable[NestedKey] | None = None,
    ) -> TensorDictBase:
        keys = self.out_keys_source if out_keys is None else out_keys
        plain = (tensordict_out is None and self.inplace is True and len(tensors) == len(keys)
                 and all(isinstance(t, torch.Tensor) for t in tensors))
        if not plain:  # TensorDict's own path, with its checks and conversions
            return super()._write_to_tensordict(tensordict, tensors, tensordict_out, out_keys)
        for key, tensor in zip(keys, tensors):
            if key != "_":
                tensordict.set(key, tensor)
        return tensordict


class DirectWriteModule(DirectWriteMixin, TensorDictModule):
    """``tensordict.nn.TensorDictModule`` that writes plain tensor outputs with ``set`` (same arguments).

    Examples:
        >>> from tensordict import TensorDict
        >>> m = DirectWriteModule(torch.nn.Linear(3, 2), in_keys=["x"], out_keys=["y"])
        >>> m(TensorDict({"x": torch.ones(4, 3)}, [4]))["y"].shape
        torch.Size([4, 2])
    """


class DirectWriteValueOperator(DirectWriteMixin, ValueOperator):
    """``torchrl.modules.ValueOperator`` that writes plain tensor outputs with ``set`` (same arguments).

    Examples:
        >>> from tensordict import TensorDict
        >>> v = DirectWriteValueOperator(torch.nn.Linear(3, 1), in_keys=["observation"])
        >>> v(TensorDict({"observation": torch.ones(4, 3)}, [4]))["state_value"].shape
        torch.Size([4, 1])
    """
