"""CachePolicy: per transformer call, run the block stack or reuse a stored residual.

The transformer hands each call's block stack to the policy as a ``BlockStack``. The
policy asks for what it needs to decide (block 0's modulated input, or block 0's output),
then either runs the remaining blocks or returns the stored residual added to the input.
Subclasses implement ``should_compute`` and keep their own decision state in the
per-branch ``state`` dict, so the positive and negative passes of real CFG never mix.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

import torch

from ..errors import ConfigError, InputError

POSITIVE = "positive"
NEGATIVE = "negative"

_Policy = TypeVar("_Policy", bound="CachePolicy")


class BlockStack(Protocol):
    """One transformer call's block stack, as the transformer exposes it to a policy."""

    @property
    def stack_input(self) -> torch.Tensor:
        """Image-stream tokens entering block 0, [B, L, D]; no ``run_*`` may modify it in place."""

    def modulated_input(self) -> torch.Tensor:
        """Block 0's ``norm1`` modulated image-stream input: LN(x)·(1+scale)+shift."""

    def run_first(self) -> torch.Tensor:
        """Run block 0 only; returns the image stream after it, a tensor ``run_rest`` leaves intact."""

    def run_rest(self) -> torch.Tensor:
        """Run every block after block 0 (``run_first`` must have run); returns the final image stream."""

    def run_all(self) -> torch.Tensor:
        """Run every block; returns the final image stream."""

    def agree(self, compute: bool) -> bool:
        """The decision this call takes: ``compute`` itself in one process; under sequence
        parallelism the first rank's, so that every rank of the group runs the same blocks."""


@dataclass
class CacheStep:
    """What a policy sees when deciding one call."""

    step: int
    num_steps: int
    branch: str
    stack_input: torch.Tensor
    modulated_input: torch.Tensor | None = None
    first_block_residual: torch.Tensor | None = None


@dataclass
class SectionStats:
    """Calls computed and skipped in one section, per guidance branch."""

    num_steps: int
    computed: dict[str, list[int]] = field(default_factory=dict)
    skipped: dict[str, list[int]] = field(default_factory=dict)

    @property
    def computed_count(self) -> int:
        return sum(len(v) for v in self.computed.values())

    @property
    def skipped_count(self) -> int:
        return sum(len(v) for v in self.skipped.values())


@dataclass
class _Branch:
    calls: int = 0
    residual: torch.Tensor | None = None
    state: dict[str, Any] = field(default_factory=dict)


class CachePolicy:
    """Base of every cache policy. Subclass and override ``should_compute``.

    Class flags say what the decision needs: ``needs_modulated_input`` makes the
    transformer compute block 0's modulated input before deciding;
    ``decides_after_first_block`` runs block 0 first and hands over its residual, and a
    skip then reuses the residual of the remaining blocks.

    Each guidance branch has its own call counter (``CacheStep.step``, wrapping after
    ``num_steps`` calls), stored residual and ``state`` dict, all cleared by
    ``start_section``. A call with no stored residual always computes. ``stats`` holds one
    ``SectionStats`` per section started.

    A policy is called as ``run(stack)``, once per transformer call. Under real CFG the
    guidance wrapper gives the transformer ``branch(NEGATIVE)`` for the negative pass, a view
    of the same policy that runs with the negative branch's state; the transformer itself
    knows nothing of branches.

    A policy given in the settings is a template: the section loop samples with ``for_run()``,
    a copy of its settings with fresh state, so runs sharing one policy object (two threads,
    or one run after another) share no decision state, residual or statistics. The copy is
    shallow: attributes set in ``__init__`` are settings, shared by every copy; what a call
    decides from belongs in ``state``.
    """

    needs_modulated_input: ClassVar[bool] = False
    decides_after_first_block: ClassVar[bool] = False

    def __init__(self) -> None:
        self.stats: list[SectionStats] = []
        self._num_steps = 0
        self._branches: dict[str, _Branch] = {}

    # --- what a subclass writes -------------------------------------------------------
    def should_compute(self, step: CacheStep, state: dict[str, Any]) -> bool:
        """True to run the blocks, False to reuse the stored residual. Called on every call."""
        raise NotImplementedError

    def on_computed(self, step: CacheStep, residual: torch.Tensor, state: dict[str, Any]) -> None:
        """Called after the blocks ran, with the residual now stored (for policies that measure it).

        That is the whole stack's residual, or the residual of the blocks after block 0 when
        ``decides_after_first_block`` is set.
        """

    # --- what the sampler and the transformer call ------------------------------------
    def for_run(self: _Policy) -> _Policy:
        """A copy with this policy's settings and none of its state, for one run of sections."""
        run = copy.copy(self)
        run.stats = []
        run._num_steps = 0
        run._branches = {}
        return run

    def finish_section(self) -> SectionStats:
        """The statistics of the section that just finished."""
        if not self.stats:
            raise ConfigError(f"{type(self).__name__}: finish_section() before any start_section(num_steps)")
        return self.stats[-1]

    def start_section(self, num_steps: int) -> None:
        """Forget every stored residual and decision state; a new section of ``num_steps`` begins."""
        if num_steps < 1:
            raise ConfigError(f"{type(self).__name__}.start_section: num_steps must be >= 1, got {num_steps}")
        self._num_steps = num_steps
        self._branches = {}
        self.stats.append(SectionStats(num_steps))

    def run(self, stack: BlockStack) -> torch.Tensor:
        """One transformer call (of the positive branch): the final image stream, computed or reused."""
        return self._run(stack, POSITIVE)

    def branch(self, name: str) -> PolicyBranch:
        """This policy as one guidance branch sees it: its own counter, residual and ``state``."""
        return PolicyBranch(self, name)

    def _run(self, stack: BlockStack, branch: str) -> torch.Tensor:
        if not self.stats:
            raise ConfigError(f"{type(self).__name__}: call start_section(num_steps) before the first transformer call")
        record = self._branches.setdefault(branch, _Branch())
        step = CacheStep(record.calls % self._num_steps, self._num_steps, branch, stack.stack_input)
        record.calls += 1
        if self.needs_modulated_input:
            step.modulated_input = stack.modulated_input()
        base = step.stack_input
        if self.decides_after_first_block:
            base = stack.run_first()
            step.first_block_residual = base - step.stack_input
        # One decision for every rank sharing the call: a rank whose float rounding decided otherwise
        # would run collectives the others skip.
        compute = stack.agree(self.should_compute(step, record.state) or record.residual is None)
        section = self.stats[-1]
        if not compute:
            if record.residual.shape != base.shape:
                # A stale residual of another shape would broadcast or fail deep inside the model.
                raise InputError(
                    f"{type(self).__name__}: branch {branch!r} stored a residual of shape "
                    f"{list(record.residual.shape)} but this call's tokens have shape {list(base.shape)}; "
                    "call start_section() when the input changes"
                )
            section.skipped.setdefault(branch, []).append(step.step)
            return base + record.residual
        out = stack.run_rest() if self.decides_after_first_block else stack.run_all()
        record.residual = out - base
        section.computed.setdefault(branch, []).append(step.step)
        self.on_computed(step, record.residual, record.state)
        return out


class NoCache(CachePolicy):
    """Run every block on every call; stores nothing."""

    def __repr__(self) -> str:
        return "NoCache()"

    def should_compute(self, step: CacheStep, state: dict[str, Any]) -> bool:
        return True

    def _run(self, stack: BlockStack, branch: str) -> torch.Tensor:
        if self.stats:
            record = self._branches.setdefault(branch, _Branch())
            self.stats[-1].computed.setdefault(branch, []).append(record.calls % self._num_steps)
            record.calls += 1
        return stack.run_all()


class PolicyBranch:
    """One guidance branch of a policy (``CachePolicy.branch``): what the transformer's ``cache=`` gets
    for the negative pass of real CFG. Its calls are the policy's calls, with that branch's state."""

    def __init__(self, policy: CachePolicy, name: str) -> None:
        self.policy = policy
        self.name = name

    def __repr__(self) -> str:
        return f"{self.policy!r}.branch({self.name!r})"

    def run(self, stack: BlockStack) -> torch.Tensor:
        return self.policy._run(stack, self.name)
