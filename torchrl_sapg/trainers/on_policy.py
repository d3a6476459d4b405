"""The on-policy training loop every algorithm of the library shares (PPO, SAPG, EPO, PBT)."""
from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Iterable, Mapping

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import nn
from torchrl.objectives import LossModule
from torchrl.record.loggers import Logger
from torchrl.trainers import Trainer

from torchrl_sapg.objectives.kl import gaussian_kl  # noqa: F401  (re-exported)
from torchrl_sapg.objectives.off_policy_ppo import OffPolicyClipPPOLoss
from torchrl_sapg.objectives.value import estimate_values
from torchrl_sapg.trainers.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from torchrl_sapg.trainers.distributed import rank_seed
from torchrl_sapg.trainers.lr_schedule import LearningRateSchedule
from torchrl_sapg.trainers.screening import screen_nonfinite
from torchrl_sapg.trainers.stepper import ClippedGradientStepper, skip_if_nonfinite  # noqa: F401  (re-exported)

CHECKPOINT_FORMAT = "torchrl-sapg/1"


class OnPolicyTrainer(Trainer):
    """collect → value estimation → mini-epochs of shuffled minibatches → log → checkpoint.

    A TorchRL :class:`~torchrl.trainers.Trainer` (every hook stage works): value estimation once per
    batch, explicit minibatching, clipped NaN-safe steps, a KL-adaptive LR, normalisers, per-policy
    logging, validated checkpoints and an exact resume. The loop, stage by stage: ``docs/trainer.md``.

    Args:
        collector: a :class:`~torchrl_sapg.collectors.PopulationCollector` (or any TorchRL
            collector of ``[N, T]`` batches; per-policy logging then falls back to nothing).
        loss_module: a TorchRL ``LossModule`` (``ClipPPOLoss``, ``SAPGLoss``...).
        optimizer: the optimiser over ``loss_module.parameters()``.
        total_frames: env frames to train for.
        num_epochs: passes over each batch (mini-epochs).
        num_minibatches / minibatch_size: exactly one of them.
        value_estimator: run on each batch before the update (``None``: the loss computes its
            own advantages), through :func:`~torchrl_sapg.objectives.value.estimate_values`.
        max_grad_norm: global gradient-norm clip.
        reward_scale: rewards are multiplied by this before value estimation (logged episode
            returns are unaffected: the collector records them first).
        lr_schedule: a :class:`LearningRateSchedule` (default: fixed).
        kl_key: the loss output the adaptive schedule reads when ``kl_actor`` is ``None``.
        kl_actor: the Gaussian actor; the adaptive schedule then reads the analytic KL of each
            minibatch (:func:`gaussian_kl`), as rl_games and rsl_rl do. Recommended: the sample
            estimate ``kl_approx`` is too noisy per minibatch to drive the rule.
        kl_reduction: how that KL is reduced over a population's policies: ``"mean"`` (rl_games)
            or ``"max_policy"`` (the policy that moved most sets the learning rate; see
            :func:`gaussian_kl`).
        obs_normalizers: :class:`~torchrl_sapg.modules.ObservationNormalizer` s to update, each
            reading ``observation_key``, or ``(normalizer, key)`` pairs (an asymmetric critic's).
        observation_key: the key the normalisers read by default.
        logger: a TorchRL logger (CSV, wandb, tensorboard).
        log_interval: log every that many iterations.
        checkpoint_path: where ``last.pt`` is written (``None``: no checkpoints).
        checkpoint_interval: env frames between checkpoints (and one at the end).
        compile: ``torch.compile`` the update step (:meth:`ClippedGradientStepper.loss_step`) after a first
            eager update: ``False``, ``True`` or a dict of ``torch.compile`` keyword arguments (docs/throughput.md).
        cudagraphs: compile it with CUDA graphs (``mode="reduce-overhead"``; needs a CUDA device).
        keep_checkpoints: rotated copies ``last.<frames>.pt`` kept beside ``last.pt`` (0: only ``last.pt``).
        nonfinite: a collected batch with NaN/inf observations or rewards: ``"raise"`` (stop, naming the key,
            env rows and frames) or ``"drop"`` (refill those env rows with copies of random finite rows of the
            same policy, count them in ``train/nonfinite_rows``, go on).
        headline_policy: the policy whose return is the headline metric (the SAPG leader).
        progress_bar: show a tqdm bar.
        seed: seeds torch and the minibatch generator.
        checkpoint_extra: a callable returning extra picklable data stored in each checkpoint
            (e.g. the resolved config).
        sequence_minibatches: recurrent policies: minibatches are whole env-rows (``[N', T]``
            sequences, never flattened; ``num_minibatches`` / ``minibatch_size`` count env-rows),
            and value estimation, ``batch_process`` hooks (SAPG's ``aggregate``) and the loss run
            in TorchRL's recurrent mode (``set_recurrent_mode(True)``): each row is replayed from
            its stored initial hidden state, with resets at ``"is_init"``.
        sync: a :class:`~torchrl_sapg.trainers.distributed.DistributedSync` for data-parallel
            training under ``torchrun`` (``docs/distributed.md``): parameters are broadcast from
            rank 0 here, gradients and the KL are averaged every step, normalisers and episode
            statistics merged; ``total_frames`` and the frame counter are global (all ranks);
            only rank 0 logs and writes checkpoints (every rank must call :meth:`save`).

    Examples:
        See ``docs/trainer.md`` and ``recipes/train.py``; a complete run::

            trainer = OnPolicyTrainer(collector=collector, loss_module=loss, optimizer=optim,
                                      total_frames=1_000_000, num_epochs=5, num_minibatches=4,
                                      value_estimator=gae)
            trainer.train()
    """

    def __init__(
        self,
        *,
        collector,
        loss_module: LossModule,
        optimizer: torch.optim.Optimizer,
        total_frames: int,
        num_epochs: int,
        num_minibatches: int | None = None,
        minibatch_size: int | None = None,
        value_estimator: Callable[[TensorDictBase], TensorDictBase] | None = None,
        max_grad_norm: float | None = 1.0,
        lr_schedule: LearningRateSchedule | None = None,
        kl_key: str = "kl_approx",
        kl_actor=None,
        kl_reduction: str = "mean",
        reward_scale: float = 1.0,
        reward_key: NestedKey = ("next", "reward"),
        obs_normalizers: Iterable[nn.Module | tuple[nn.Module, NestedKey]] = (),
        observation_key: NestedKey = "observation",
        logger: Logger | None = None,
        log_interval: int = 1,
        checkpoint_path: str | None = None,
        checkpoint_interval: int | None = None,
        headline_policy: int = 0,
        progress_bar: bool = True,
        seed: int | None = None,
        checkpoint_extra: Callable[[], Mapping[str, Any]] | None = None,
        sequence_minibatches: bool = False,
        sync=None,
        keep_checkpoints: int = 3,
        nonfinite: str = "raise",
        compile: bool | dict = False,
        cudagraphs: bool = False,
    ):
        self._check_arguments(num_epochs, num_minibatches, minibatch_size, total_frames, nonfinite)
        self.lr_schedule = lr_schedule or LearningRateSchedule(optimizer, mode="fixed")
        self.sync = sync
        self.world_size = 1 if sync is None else sync.world_size
        if sync is not None and not sync.is_main:
            logger, progress_bar = None, False  # rank 0 logs for everyone
        stepper = ClippedGradientStepper(
            max_grad_norm=max_grad_norm, lr_schedule=self.lr_schedule, kl_key=kl_key, kl_actor=kl_actor,
            kl_reduction=kl_reduction, compile=compile, cudagraphs=cudagraphs,
        )
        super().__init__(
            collector=collector, total_frames=total_frames, frame_skip=1, optim_steps_per_batch=1,
            loss_module=loss_module, optimizer=optimizer, optimization_stepper=stepper, logger=logger,
            progress_bar=False,  # our own bar: it knows about resumes and per-policy returns
            seed=None, save_trainer_interval=checkpoint_interval or 0, log_interval=0, num_epochs=num_epochs,
            auto_log_optim_steps=False,
        )
        self.lr_schedule.register(self)
        self.value_estimator = value_estimator
        self.reward_scale = float(reward_scale)
        self.reward_key = reward_key
        self.num_minibatches = num_minibatches
        self.minibatch_size = minibatch_size
        self.obs_normalizers = list(obs_normalizers)
        self.observation_key = observation_key
        self.log_interval = max(1, int(log_interval))
        self.checkpoint_path = checkpoint_path
        self.checkpoint_interval = checkpoint_interval
        self.headline_policy = headline_policy
        self.show_progress = progress_bar
        self.checkpoint_extra = checkpoint_extra
        self.keep_checkpoints = int(keep_checkpoints)
        self.nonfinite = nonfinite
        self.nonfinite_rows = 0  # env rows dropped since the last log line
        self.sequence_minibatches = bool(sequence_minibatches)
        self._reset_progress()
        self._setup_device(loss_module, stepper, kl_actor, kl_reduction, seed, sync)


    def _reset_progress(self) -> None:
        """Counters, the metric history and the headline return of a run that has not trained yet."""
        self.iteration = 0
        self.collected_frames = 0
        self._last_save_frames = 0
        self.last_metrics: dict[str, float] = {}
        self.last_return = float("nan")  # headline return of the last iteration in which episodes ended
        self.history: list[dict[str, float]] = []

    @staticmethod
    def _check_arguments(num_epochs, num_minibatches, minibatch_size, total_frames, nonfinite) -> None:
        """Raise on an inconsistent batch layout, frame budget or non-finite mode."""
        if nonfinite not in ("raise", "drop"):
            raise ValueError(f"nonfinite={nonfinite!r}: choose 'raise' (stop on NaN/inf data) or 'drop' (drop those env rows).")
        if (num_minibatches is None) == (minibatch_size is None):
            raise ValueError(
                "give exactly one of num_minibatches or minibatch_size: the minibatch is never "
                f"derived silently (got num_minibatches={num_minibatches}, minibatch_size={minibatch_size})."
            )
        for name, value in (("num_epochs", num_epochs), ("num_minibatches", num_minibatches), ("minibatch_size", minibatch_size)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if total_frames <= 0:
            raise ValueError(f"total_frames must be positive, got {total_frames}.")

    def _setup_device(self, loss_module, stepper, kl_actor, kl_reduction, seed, sync) -> None:
        """The minibatch generator and seeds, the loss's own analytic KL, the compile checks, rank 0's weights."""
        device = next(iter(loss_module.parameters())).device
        if stepper._analytic_kl and hasattr(loss_module, "analytic_kl"):
            # the loss reports the KL from its own forward: no second actor pass per minibatch
            loss_module.analytic_kl = kl_reduction
            loss_module.analytic_kl_num_policies = getattr(kl_actor, "num_policies", None)
        stepper.check_device(device)
        self.generator = torch.Generator(device=device)
        if seed is not None:  # under torchrun each rank its own action noise and shuffles
            seed = seed if sync is None else rank_seed(seed, sync.rank)
            torch.manual_seed(seed)
            self.generator.manual_seed(seed)
        self._printed_layout = False
        if sync is not None:
            sync.broadcast_module(loss_module)  # every rank starts from rank 0's weights

    # ------------------------------------------------------------------ batch arithmetic
    def minibatch_layout(self, rows: int) -> tuple[int, int]:
        """``(num_minibatches, minibatch_size)`` for a batch of ``rows`` rows (env-rows, i.e.
        ``[T]`` sequences, with ``sequence_minibatches``); raises if uneven."""
        unit = "env-rows ([T] sequences; sequence_minibatches=True)" if self.sequence_minibatches else "rows"
        fix = "num_envs (plus SAPG's off-policy rows)" if self.sequence_minibatches else "num_envs or the horizon"
        if self.num_minibatches is not None:
            if rows % self.num_minibatches:
                raise ValueError(
                    f"a batch of {rows} {unit} does not split into num_minibatches={self.num_minibatches} "
                    f"equal minibatches; change num_minibatches or {fix}."
                )
            return self.num_minibatches, rows // self.num_minibatches
        if rows % self.minibatch_size:
            raise ValueError(
                f"a batch of {rows} {unit} does not split into minibatches of minibatch_size="
                f"{self.minibatch_size}; choose a divisor of {rows}."
            )
        return rows // self.minibatch_size, self.minibatch_size

    # ------------------------------------------------------------------ the loop
    def _recurrent_context(self):
        """TorchRL's recurrent mode with ``sequence_minibatches``, else a no-op."""
        if not self.sequence_minibatches:
            return contextlib.nullcontext()
        from torchrl.modules import set_recurrent_mode

        return set_recurrent_mode(True)

    def optim_steps(self, batch: TensorDictBase) -> TensorDictBase:
        """Mini-epochs over shuffled minibatches of ``batch`` (flattened to rows, or whole
        ``[T]`` env-rows in recurrent mode with ``sequence_minibatches``)."""
        with self._recurrent_context():
            return self._optim_steps(batch)

    def _optim_steps(self, batch: TensorDictBase) -> TensorDictBase:
        self._pre_optim_hook()
        if self.sequence_minibatches:
            if batch.batch_dims != 2:
                raise ValueError(
                    f"sequence_minibatches=True needs an [N, T] batch of env-rows, got batch_size={tuple(batch.batch_size)}."
                )
            flat = batch  # shuffled and split along the env-row dim only: sequences stay whole
        else:
            flat = self._training_rows(batch).reshape(-1)
        rows = flat.shape[0]
        n_mb, mb = self.minibatch_layout(rows)
        if not self._printed_layout:
            self._printed_layout = True
            self.batch_layout = {"rows": rows, "num_minibatches": n_mb, "minibatch_size": mb,
                                 "optimizer_steps_per_iteration": n_mb * self.num_epochs}
            if self.sequence_minibatches:
                self.batch_layout["sequence_length"] = int(flat.shape[1])
            if self.optimization_stepper.compiled:  # one eager update first: one compilation, not two
                self.optimization_stepper.compile_warmup = n_mb * self.num_epochs
        total, loss = None, self.loss_module  # our off-policy losses reduce their diagnostics once per update (eager)
        # kl_approx too, unless the step reads it (a stepper that does not say what it reads may)
        deferred = isinstance(loss, OffPolicyClipPPOLoss) and not getattr(self.optimization_stepper, "compiled", False)
        defer_kl = "kl_approx" not in getattr(self.optimization_stepper, "minibatch_reads", {"kl_approx"})
        with loss.deferred_diagnostics(kl_approx=defer_kl) if deferred else contextlib.nullcontext() as pending:
            for _ in range(self.num_epochs):
                self._pre_epoch_log_hook(flat)
                flat = self._pre_epoch_hook(flat)
                perm = torch.randperm(rows, generator=self.generator, device=self.generator.device)
                for i in range(n_mb):
                    sub = flat[perm[i * mb : (i + 1) * mb]]
                    sub = self._process_optim_batch_hook(sub)
                    self._optim_count += 1
                    losses = self.optimization_stepper.step(self, sub)
                    self._post_optim_hook()
                    self._post_optim_log(sub)
                    total = losses.clone() if total is None else total.add_(losses)
                self._post_epoch_log_hook(flat)
                self._post_epoch_hook()
        average = total / (n_mb * self.num_epochs)
        if pending is not None:  # the off-policy diagnostics, averaged over the minibatches in one reduction
            average.update(pending.means())
        self._post_optim_complete_log_hook(self._optim_count, average)
        return average

    def _training_rows(self, batch: TensorDictBase) -> TensorDictBase:
        """``batch`` without the entries no minibatch reads, so each minibatch indexes fewer tensors.

        With the advantage already in the batch, this library's PPO losses read nothing under ``"next"``
        (the value estimator's inputs) or ``"collector"``. Any other loss, or a hook that sees the
        minibatches (``pre_epoch``, ``process_optim_batch``, ``post_optim_log``), gets every entry.
        """
        hooks = self._pre_epoch_ops or self._pre_epoch_log_ops or self._process_optim_batch_ops or self._post_optim_log_ops
        loss = self.loss_module
        if hooks or not isinstance(loss, OffPolicyClipPPOLoss) or loss.tensor_keys.advantage not in batch.keys():
            return batch
        return batch.exclude("next", "collector")

    @torch.no_grad()
    def _estimate_values(self, batch: TensorDictBase) -> TensorDictBase:
        if self.reward_scale != 1.0:
            # after the collector recorded episode returns, so logs stay in the env's units
            batch.set(self.reward_key, batch.get(self.reward_key) * self.reward_scale)
        if self.value_estimator is None:
            return batch
        return estimate_values(self.value_estimator, batch)

    def train(self) -> None:
        """Train until ``total_frames`` (continuing from :meth:`load`'s point after a resume)."""
        pbar = None
        if self.show_progress:
            from tqdm.auto import tqdm

            pbar = tqdm(total=self.total_frames, initial=self.collected_frames, unit="frames", dynamic_ncols=True)
        self._setup_hook()
        t_last = time.perf_counter()
        frames_last = self.collected_frames
        try:
            for batch in self.collector if self.collected_frames < self.total_frames else ():
                frames = batch.numel() * self.world_size  # global: every rank collects as many
                batch = self._screen_nonfinite(batch, frames)
                collected = batch
                with self._recurrent_context():  # GAE and SAPG's aggregate replay whole env-rows
                    batch = self._estimate_values(batch)
                    batch = self._process_batch_hook(batch)
                self.collected_frames += frames
                self._pre_steps_log_hook(batch)
                losses = self.optim_steps(batch)
                self._update_normalizers(collected)
                self.lr_schedule.on_iteration(self.collected_frames)
                self._post_steps_hook()
                self._post_steps_log_hook(batch)
                self.iteration += 1
                done = self.collected_frames >= self.total_frames or self._stop_training
                if self.iteration % self.log_interval == 0 or done:
                    now = time.perf_counter()
                    fps = (self.collected_frames - frames_last) / max(now - t_last, 1e-9)
                    t_last, frames_last = now, self.collected_frames
                    metrics = self._metrics(losses, fps)
                    self._write_log(metrics)
                    ret = metrics.get("episode/return", float("nan"))
                    if not math.isnan(ret):
                        self.last_return = ret
                    if pbar is not None:
                        pbar.set_postfix(fps=f"{fps:,.0f}", ret=f"{self.last_return:.1f}")
                else:
                    self._check_finite(losses)
                if pbar is not None:
                    pbar.update(frames)
                if self.checkpoint_path is not None and (
                    done
                    or (self.checkpoint_interval and self.collected_frames - self._last_save_frames >= self.checkpoint_interval)
                ):
                    self.save()
                if done:
                    break
        finally:
            if pbar is not None:
                pbar.close()
        self._shutdown_hook()

    def _screened_keys(self, batch: TensorDictBase) -> list[NestedKey]:
        observed = [self.observation_key] + [e[1] for e in self.obs_normalizers if isinstance(e, tuple)]
        nested = [("next", *k) if isinstance(k, tuple) else ("next", k) for k in observed]
        keys = [*observed, *nested, self.reward_key]
        present = batch.keys(include_nested=True)
        return [k for k in dict.fromkeys(keys) if k in present]

    def _screen_nonfinite(self, batch: TensorDictBase, frames: int) -> TensorDictBase:
        """Stop on (or drop) env rows whose observations or rewards hold NaN/inf; one host sync per batch."""
        where = f"frames {self.collected_frames:,}-{self.collected_frames + frames:,} (iteration {self.iteration + 1})"
        blocks = max(1, int(getattr(self.collector, "num_policies", 1) or 1))
        batch, dropped = screen_nonfinite(batch, self._screened_keys(batch), mode=self.nonfinite, where=where,
                                          blocks=blocks, generator=self.generator)
        self.nonfinite_rows += dropped
        return batch

    def _update_normalizers(self, collected: TensorDictBase) -> None:
        for entry in self.obs_normalizers:
            norm, key = entry if isinstance(entry, tuple) else (entry, self.observation_key)
            obs = collected.get(key)
            norm.update(obs.reshape(-1, *obs.shape[collected.batch_dims :]), sync=self.sync)

    # ------------------------------------------------------------------ logging
    @staticmethod
    def _check_finite(losses: TensorDictBase) -> None:
        bad = [k for k, v in losses.items() if k.startswith("loss_") and not torch.isfinite(v).all()]
        if bad:
            raise FloatingPointError(
                f"non-finite loss terms {bad} in this iteration. Lower the learning rate, enable "
                "gradient clipping (max_grad_norm) or observation normalisation, or check the env "
                "for NaN observations/rewards; resume from the last checkpoint."
            )

    def _metrics(self, losses: TensorDictBase, fps: float) -> dict[str, float]:
        self._check_finite(losses)
        metrics = {f"train/{k}": float(v) for k, v in losses.items() if v.numel() == 1}
        metrics["train/lr"] = float(self.lr_schedule.lr)
        metrics["train/fps"] = fps  # all ranks together
        if self.sync is not None:
            metrics["train/fps_per_rank"] = fps / self.world_size
            metrics["train/world_size"] = float(self.world_size)
        metrics["train/frames"] = float(self.collected_frames)
        if self.nonfinite == "drop":
            metrics["train/nonfinite_rows"] = float(self.nonfinite_rows)
            self.nonfinite_rows = 0
        metrics["train/iteration"] = float(self.iteration)
        stats_fn = getattr(self.collector, "episode_stats", None)
        if stats_fn is not None:
            stats = stats_fn()
            if self.sync is not None:
                stats = self.sync.reduce_episode_stats(stats)
            for name, value in stats.items():
                values = value.tolist()
                for i, v in enumerate(values):
                    metrics[f"policy/{i}/{name}"] = float(v)
            lead = self.headline_policy
            for name in stats.keys():
                metrics[f"episode/{name}"] = metrics[f"policy/{lead}/{name}"]
        self.last_metrics = metrics
        self.history.append(metrics)
        return metrics

    def _write_log(self, metrics: Mapping[str, float]) -> None:
        if self.logger is None:
            return
        for key, value in metrics.items():
            if not math.isnan(value):
                self.logger.log_scalar(key, value, step=self.collected_frames)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        """Everything an exact resume needs, as one picklable dict."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "trainer": self.state_dict(),
            "frames": self.collected_frames,
            "iteration": self.iteration,
            "optim_count": self._optim_count,
            "generator": self.generator.get_state(),
            "rng": rng_state(),
            "history": self.history,
        }
        if self.sync is not None:  # each rank's own random streams (envs and actions differ per rank)
            state["ranks"] = self.sync.gather_objects({"rng": state["rng"], "generator": state["generator"]})
        if self.checkpoint_extra is not None:
            state["extra"] = dict(self.checkpoint_extra())
        return state

    def save(self, path: str | None = None) -> str:
        """Write a checkpoint atomically to ``path`` (default: ``checkpoint_path``)."""
        path = path or self.checkpoint_path
        if path is None:
            raise ValueError("no checkpoint path: pass checkpoint_path= to the trainer or a path to save().")
        state = self.checkpoint_state()  # collective under sync: every rank gets here
        if self.sync is None or self.sync.is_main:
            save_checkpoint(state, path, keep_last=self.keep_checkpoints)
        self._last_save_frames = self.collected_frames
        return str(path)

    def load(self, path: str) -> None:
        """Restore a checkpoint written by :meth:`save` so :meth:`train` continues exactly."""
        self.restore(load_checkpoint(path), source=path)

    def restore(self, state: Mapping[str, Any], *, source: str = "<in-memory state>") -> None:
        """Restore from a :meth:`checkpoint_state` dict already in memory (what :meth:`load` does)."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise RuntimeError(
                f"{source!r} is not a {CHECKPOINT_FORMAT} checkpoint (format={state.get('format')!r})."
            )
        try:
            self.load_state_dict(state["trainer"])
        except (RuntimeError, KeyError, ValueError) as err:
            first = " ".join(str(err).split())[:300] or type(err).__name__  # the cause, without tensordict's dumps
            raise RuntimeError(
                f"checkpoint {source!r} does not match this run's model/optimiser ({first}). Resume with "
                "the same algo, env and network config the checkpoint was written with."
            ) from None
        self.collected_frames = state["frames"]
        self._last_save_frames = state["frames"]
        self.iteration = state["iteration"]
        self._optim_count = state["optim_count"]
        ranks = state.get("ranks")
        if self.sync is not None and ranks is not None and len(ranks) == self.world_size:
            mine = ranks[self.sync.rank]
            self.generator.set_state(mine["generator"])
            set_rng_state(mine["rng"])
        elif self.sync is None or self.sync.is_main:
            self.generator.set_state(state["generator"])
            set_rng_state(state["rng"])
        # else: a world size other than the checkpoint's: ranks > 0 keep their own seeded streams
        self.history = list(state.get("history", []))
        returns = [h.get("episode/return", float("nan")) for h in self.history]
        self.last_return = next((r for r in reversed(returns) if not math.isnan(r)), float("nan"))
