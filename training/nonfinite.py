"""What a run does when its loss or gradient norm stops being a finite number.

Policies (recipe key `nonfinite_policy`, as OLMo-core's and the HF Trainer's guards):

  stop  (default) the first non-finite loss or pre-clip gradient norm ends the run: an error naming
        the iteration, exit code 3, and no checkpoint is ever written from that state (the check
        runs before every checkpoint, evaluation and log record, so the last good checkpoints are
        never pruned in favour of bad ones).
  skip  a step whose loss or gradient norm is non-finite leaves weights, optimizer state and LR
        schedule untouched; the count is logged (`skipped_steps` in train records, a `skipped_step`
        record each time) and `nonfinite_max_skips` consecutive skips stop the run as `stop` does.

Cost: `stop` keeps the verdict on the device (the first bad iteration, a 0-d tensor updated with
torch.where) and reads it only at the points where the loop syncs anyway: log steps, evaluations,
checkpoints and the end, so a GPU step never waits for it. `skip` must decide before the optimizer
step: under DeepSpeed ZeRO-1/2/3 the engine already skips steps whose gradient norm is non-finite
(and has synced to know it: `was_step_applied()` is a host bool), elsewhere the guard reads the
norm, one host sync per step.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Optional

import torch
import torch.distributed as dist

NAN_TEST_ENV = "TRAINING_TEST_NAN_AT_ITERS"  # test hook: comma-separated iterations whose loss is made NaN
EXIT_CODE = 3  # distinct from config errors (2): a supervisor can tell "diverged" from "misconfigured"


class NonFiniteError(RuntimeError):
    """The run met a non-finite loss or gradient norm (policy stop, or too many skips in a row)."""


def is_finite(*values: Optional[torch.Tensor]) -> torch.Tensor:
    """One bool tensor: every given value is finite (None values are ignored)."""
    flags = [torch.isfinite(v.detach().float()).all() for v in values if v is not None]
    return torch.stack(flags).all() if flags else torch.tensor(True)


def global_grad_norm(module: torch.nn.Module) -> torch.Tensor:
    """Global L2 norm of the module's .grad tensors (full, already reduced: 1 process, DDP, ZeRO-0)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads]))


class NonFiniteGuard:
    """The run's verdict on non-finite steps (the policy is checked by TrainConfig.validate)."""

    def __init__(self, policy: str, max_skips: int, device: torch.device):
        self.policy, self.max_skips, self.device = policy, max_skips, device
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)  # -1: every step so far was finite
        self.skipped_steps = 0
        self.consecutive_skips = 0

    def observe(self, iteration: int, finite: torch.Tensor) -> None:
        """Record step `iteration`'s verdict on the device (no sync): remember the first bad one."""
        bad_now = (self.first_bad < 0) & ~finite.to(self.device)
        self.first_bad = torch.where(bad_now, torch.full_like(self.first_bad, iteration), self.first_bad)

    def step_skipped(self, iteration: int) -> None:
        """Policy skip: step `iteration` was not applied. Stops after max_skips in a row."""
        self.skipped_steps += 1
        self.consecutive_skips += 1
        if self.consecutive_skips >= self.max_skips:
            raise NonFiniteError(
                f"{self.consecutive_skips} consecutive steps up to iteration {iteration} had a non-finite loss "
                f"or gradient norm and were skipped (nonfinite_max_skips={self.max_skips}); the run stops with "
                "its last checkpoint intact. Lower lr, raise warmup_iters or check the data"
            )

    def step_applied(self) -> None:
        self.consecutive_skips = 0

    def check(self, group=None) -> None:
        """At a sync point: raise if any rank has seen a non-finite step (policy stop). Collective
        when distributed: every rank calls it at the same iterations."""
        if self.policy != "stop":
            return
        first = self.first_bad.detach().to("cpu" if group is not None else self.first_bad.device)
        if group is not None:  # the smallest bad iteration over ranks (-1 maps to "none")
            none = torch.iinfo(torch.long).max
            first = torch.where(first < 0, torch.full_like(first, none), first).reshape(1)
            dist.all_reduce(first, op=dist.ReduceOp.MIN, group=group)
            first = -1 if int(first) == none else int(first)
        else:
            first = int(first)
        if first >= 0:
            raise NonFiniteError(
                f"non-finite loss or gradient norm at iteration {first} (nonfinite_policy=stop); no checkpoint "
                "was written from that state. Lower lr or raise warmup_iters, check the data, or set "
                "--nonfinite_policy=skip to skip such steps; resume from the last checkpoint with --resume=auto"
            )


class LossSpikes:
    """Loss spikes as events: a logged loss more than `zscore` standard deviations above the mean of the
    previous `window` logged losses. Reads only losses the log steps already synced."""

    def __init__(self, zscore: float, window: int):
        self.zscore, self.history = zscore, deque(maxlen=window)

    def update(self, loss: float) -> Optional[float]:
        """The loss's z-score if it is a spike, else None; then adds it to the window."""
        spike = None
        if self.zscore > 0 and len(self.history) >= max(8, self.history.maxlen // 4) and math.isfinite(loss):
            n = len(self.history)
            mean = sum(self.history) / n
            std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / (n - 1))
            z = (loss - mean) / max(std, 1e-12)
            if z > self.zscore:
                spike = z
        if math.isfinite(loss):
            self.history.append(loss)
        return spike
