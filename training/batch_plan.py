"""The batch plan: micro-batch x accumulation x ranks = the global batch, worked out once per run.

Every number of sequences or tokens a step handles comes from one `BatchPlan`, computed from the recipe
and the world size before anything is built (`TrainConfig.batch_plan`), printed at start, logged in the
config record (`batch`), and handed to the Accelerator, the DeepSpeed config, the loaders and the Trainer.
The memory planner (`training.planning.batch`) and the sweep build theirs with the same class, so one
error message covers every way to ask for a batch that does not divide. Standard library only: the
recipe (`training.config`) imports it before torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional


@dataclass(frozen=True)
class BatchPlan:
    seq_len: int  # tokens per sequence (the recipe's seq_len)
    micro_batch: int  # sequences per rank per forward/backward
    grad_accum_steps: int  # micro-batches per rank per optimizer step
    world_size: int  # data-parallel ranks

    def __post_init__(self) -> None:
        for name in ("seq_len", "micro_batch", "grad_accum_steps", "world_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def global_sequences(self) -> int:
        """Sequences per optimizer step, all ranks."""
        return self.micro_batch * self.grad_accum_steps * self.world_size

    @property
    def tokens_per_iter(self) -> int:
        """Tokens per optimizer step, all ranks."""
        return self.global_sequences * self.seq_len

    @classmethod
    def from_global(cls, seq_len: int, micro_batch: int, world_size: int, *, global_sequences: Optional[int] = None,
                    global_tokens: Optional[int] = None) -> "BatchPlan":
        """The accumulation that makes micro_batch x world_size x steps equal the global batch (given in
        sequences or tokens; neither: no accumulation), or one error naming the values that would divide."""
        if global_sequences is not None and global_tokens is not None:
            raise ValueError("give the global batch in sequences or in tokens, not both")
        if global_tokens is not None:
            if global_tokens % seq_len:
                lower = global_tokens // seq_len * seq_len
                raise ValueError(f"a global batch of {global_tokens} tokens is not a whole number of {seq_len}-token "
                                 f"sequences (not a multiple of seq_len={seq_len}); use {lower or seq_len} or "
                                 f"{lower + seq_len} tokens, or give the global batch in sequences")
            global_sequences = global_tokens // seq_len
        if global_sequences is None:
            return cls(seq_len, micro_batch, 1, world_size)
        per_step = micro_batch * world_size
        if global_sequences < 1 or global_sequences % per_step:
            options = [m for m in range(1, global_sequences + 1) if global_sequences % (m * world_size) == 0]
            raise ValueError(
                f"global batch of {global_sequences} sequences is not divisible by micro_batch_size={micro_batch} "
                f"x world_size={world_size} = {per_step}; micro_batch_size values that divide it: {options[:12]}"
            )
        return cls(seq_len, micro_batch, global_sequences // per_step, world_size)

    def describe(self) -> str:
        """One console line: what an optimizer step holds and how it is split."""
        return (f"batch: {self.global_sequences} sequences x {self.seq_len} tokens = {self.tokens_per_iter:,} tokens "
                f"per iteration (micro-batch {self.micro_batch} x accumulation {self.grad_accum_steps} "
                f"x {self.world_size} rank{'s' if self.world_size > 1 else ''})")

    def to_dict(self) -> dict:
        return {**asdict(self), "global_sequences": self.global_sequences, "tokens_per_iter": self.tokens_per_iter}
