"""A mixin for TorchRL's gym-like wrappers of GPU simulators: no host read of ``done`` per step."""
from __future__ import annotations


class OneFrameReadDone:
    """Mix in before a ``GymLikeEnv`` subclass: with one frame per step, ``read_done`` asks no early exit.

    ``GymLikeEnv._step`` leaves its frame-skip loop on ``read_done``'s ``do_break`` (TorchRL's Isaac Lab and
    Isaac Gym wrappers return ``done.any()``, a host sync at every step). With one frame there is no loop
    to leave; with several, ``do_break`` is kept.
    """

    def read_done(self, terminated=None, truncated=None, done=None):
        terminated, truncated, done, do_break = super().read_done(terminated, truncated, done)
        return terminated, truncated, done, do_break if self.wrapper_frame_skip > 1 else False
