"""Verdicts: where a claimed tick goes, decided once by the policy and carried out by one settler.

Every outcome of a claim is a `Verdict`: a sub-session's result or failed start (`Guardrails.learn`, `.failed`,
`.claude_unavailable`), an inline result or a failed handler (`completed`, `Guardrails.inline_failed`), a guard that
declines (`declined`), an overlap merge (`merged`), an unknown cadence (`unknown_cadence`), an interruption or a
disk fault (`requeued`), a reap (`reaped`). The daemon's `Settler.apply` carries each out through the bus, which
moves the file as told and decides nothing again: whether the attempts are exhausted, the dead letter's reason and
what is counted are all here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from maestro_py.bus.tick import Tick
from maestro_py.policy.failures import FailureClass


class Action(str, enum.Enum):
    """Where a settled tick goes."""

    COMPLETE = "complete"          # done/
    RETRY = "retry"                # an attempt burnt; back to inbox/, not before `retry_at`
    REQUEUE = "requeue"            # back to inbox/ as it was: not the tick's fault
    DEAD_LETTER = "dead_letter"    # dlq/ (an attempt burnt when `burns`)


@dataclass(frozen=True)
class Verdict:
    """What happens to a claimed tick, with the words its history records and the counter its move bumps."""

    action: Action
    reason: str | None = None
    retry_at: datetime | None = None
    failure_class: FailureClass | None = None
    max_attempts: int = 1
    permanent: bool = False  # dead-lettered for its class, not because its attempts ran out
    outcome: str = "failed"  # the history entry's outcome
    burns: bool = False      # this claim used one of the tick's attempts and failed (RETRY; DEAD_LETTER after a run)
    ran: bool = True         # COMPLETE: the claim was an attempt (a run, a handler, a guard); a merge was not
    counter: str | None = None  # the counter the move bumps, where it is not the action's own
    reaps: int | None = None    # a reap: how often the tick's owner has died holding it
    dlq_reason: str | None = None  # DEAD_LETTER: the dead letter's reason, where it says more than `reason`

    @property
    def burns_attempt(self) -> bool:
        return self.burns


def completed(outcome: str = "ok", reason: str | None = None) -> Verdict:
    """The work was done (a run or a handler succeeded)."""
    return Verdict(Action.COMPLETE, reason, outcome=outcome)


def declined() -> Verdict:
    """The guard said the model is not needed: done, nothing to do."""
    return Verdict(Action.COMPLETE, outcome="nothing_to_do", counter="guard_skipped")


def merged(into: str) -> Verdict:
    """A queued duplicate settled into its twin (`overlap`): done without a run, so no attempt used."""
    return Verdict(Action.COMPLETE, f"merged into {into}", outcome="skipped_overlap", ran=False,
                   counter="skipped_overlap")


def requeued(reason: str, outcome: str = "requeued", *, counter: str | None = None) -> Verdict:
    """Back to inbox/ as it was: a drain, a stop, a disk fault, a settle that failed; not the tick's fault."""
    return Verdict(Action.REQUEUE, reason, outcome=outcome, counter=counter)


def unknown_cadence(name: str) -> Verdict:
    """No registry entry and no prompt file: nothing could ever run it."""
    return Verdict(Action.DEAD_LETTER, f"unknown cadence {name!r}: no registry entry and no prompt file "
                                       f"cadences/{name}.md", outcome="dead_letter", permanent=True)


def killed(reason: str) -> Verdict:
    """An operator ended the run (`maestro tick kill`): settled as it is, neither retried nor dead-lettered."""
    return Verdict(Action.COMPLETE, reason, outcome="killed", counter="killed")


def untrusted_refused(name: str, source: str) -> Verdict:
    """An untrusted tick for a cadence that may act and does not accept untrusted input: it never runs."""
    return Verdict(Action.DEAD_LETTER, f"untrusted input (source {source!r}) refused: {name} may write, run commands "
                                       "or reach the network; set accept_untrusted = true in its table to take it, "
                                       "fenced in the prompt", outcome="dead_letter", permanent=True)


def burnt(tick: Tick, reason: str, retry_at: datetime | None, cls: FailureClass | None, *, max_attempts: int,
          permanent: bool) -> Verdict:
    """A failed attempt: back to inbox/ (not before `retry_at`), or dlq/ when its class is permanent or it was the
    last of `max_attempts` (the dead letter's reason says which)."""
    used = tick.attempts + 1
    if not permanent and used < max_attempts:
        return Verdict(Action.RETRY, reason, retry_at, cls, max_attempts, burns=True)
    count = f"{used}/{max_attempts}" if used <= max_attempts else f"{used}, and the limit is {max_attempts} now"
    return Verdict(Action.DEAD_LETTER, reason, None, cls, max_attempts, permanent=permanent, burns=True,
                   dlq_reason=None if permanent else f"attempts exhausted ({count}): {reason}")


def reaped(tick: Tick, *, max_reaps: int) -> Verdict:
    """The tick's claim owner died holding it: back to inbox/, unless its owners died `max_reaps` times (then it is
    probably what kills them: dlq/)."""
    reaps = tick.reaps + 1
    if reaps >= max_reaps:
        return Verdict(Action.DEAD_LETTER, f"its owner died {reaps} times while holding it", outcome="dead_letter",
                       reaps=reaps, counter="reaped")
    return Verdict(Action.REQUEUE, "claim owner is gone", outcome="reaped", reaps=reaps, counter="reaped")
