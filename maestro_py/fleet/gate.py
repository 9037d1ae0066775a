"""The daemon's side of the governor store: admit a spawn, settle its run, keep its lease alive, fail closed.

- `admit` reserves a live slot and the run's amount in one store transaction; the lease waits, keyed by the
  tick, until `spawned` turns it into a live run (or `unadmit` gives it back: the claim or the guard said no).
- `settle` charges a finished run by its run id. When the store cannot be reached, the settle goes to the
  outbox file first (`state/fleet-outbox.jsonl`) and is pushed later; pushes are idempotent by run id, and
  the reservation stays held in the store until then.
- `housekeep` renews the leases of live runs, pushes the outbox, and retries a store that was down.
- While the store is unreachable nothing may spawn (`admit` answers "unavailable" without waiting on the
  store more than once every `RETRY_SECONDS`); one `governor_unavailable` event, one `governor_available`.
- The loop never waits on the store: every call runs on the gate's own thread, and the loop waits for its answer
  at most `WAIT_SECONDS`. A call that takes longer (a tarpit, a frozen server: the store's own deadline ends it)
  goes on there, and the store counts as unavailable meanwhile, so inline work, the heartbeat and the status go on
  and spawns fail closed; a reservation that arrives late is given back.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent import futures
from datetime import datetime
from pathlib import Path
from typing import Any

from maestro_py.bus.events import EventLog
from maestro_py.bus.fsio import atomic_write
from maestro_py.clock import Clock, iso, parse_iso
from maestro_py.fleet.model import Admission, Lease, StoreUnavailable
from maestro_py.redact import mask_url
from maestro_py.fleet.store import SqlStore
from maestro_py.policy.budget import Estimate

RETRY_SECONDS = 5.0   # how often a store that is down is tried again
WAIT_SECONDS = 0.25   # the longest the daemon's loop waits for one answer of the store
SLOW_SECONDS = 5.0    # a call still unanswered after this long makes the store unavailable (event, alert)


class StoreSlow(StoreUnavailable):
    """The store has not answered yet (for less than SLOW_SECONDS): no spawn now, but not an outage to report."""
PRUNE_SECONDS = 3600  # how often old charges are pruned
MAX_OUTBOX_LINE = 4096


class FleetGate:
    """One agent root's view of the shared store."""

    def __init__(self, store: SqlStore, *, agent: str, host: str, pid: int, max_live: int | None,
                 lease_seconds: float, outbox: Path, events: EventLog, clock: Clock) -> None:
        self.store = store
        self.agent = agent
        self.host = host
        self.pid = pid
        self.max_live = max_live
        self.lease_seconds = lease_seconds
        self.outbox = outbox
        self.events = events
        self.clock = clock
        self.unavailable: str | None = None  # why the store cannot be used now
        self.unavailable_since: datetime | None = None
        self._retry_at = 0.0
        self._admitted: dict[str, Lease] = {}   # tick id -> reserved for a spawn about to start
        self._live: dict[str, Lease] = {}       # run id -> a live run's lease
        self._pending: list[dict[str, Any]] = self._load_outbox()
        self._renewed_at: float | None = None
        self._pruned_at: float | None = None
        self._reclaimed = False
        self._announced: set[tuple[str, str, str]] = set()
        self.last_refusal: Admission | None = None
        self._worker = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="maestro-governor")
        self._job: tuple[futures.Future[Any], Callable[[Any], None], float] | None = None  # a call still running

    def _ask(self, call: Callable[[], Any], late: Callable[[Any], None] = lambda result: None) -> Any:
        """`call()` (one store call) on the gate's thread: its result, or StoreUnavailable: its own, or because it
        takes longer than WAIT_SECONDS (it goes on there; `late` gets its result when it ends)."""
        self._collect()
        if self._job is not None:
            age = time.monotonic() - self._job[2]
            error = StoreSlow if age < SLOW_SECONDS else StoreUnavailable
            raise error(f"governor store {mask_url(self.store.url)}: no answer for {age:.1f} s")
        job = self._worker.submit(call)
        try:
            return job.result(timeout=WAIT_SECONDS)
        except futures.TimeoutError:
            self._job = (job, late, time.monotonic())
            raise StoreSlow(f"governor store {mask_url(self.store.url)}: no answer within {WAIT_SECONDS:g} s") from None

    def _collect(self) -> None:
        """A call that outlived its wait has ended: hand its result to its `late`."""
        if self._job is None or not self._job[0].done():
            return
        job, late, _ = self._job
        self._job = None
        try:
            result = job.result()
        except StoreUnavailable:
            return
        late(result)

    def _late_admission(self, answer: Admission, lease: Lease) -> None:
        """A reservation the loop stopped waiting for: no spawn uses it, so it goes back."""
        if answer.admitted:
            self._push({"op": "release", "run_id": lease.run_id})

    # -- before a spawn -----------------------------------------------------
    def admit(self, tick_id: str, cadence: str, estimate: Estimate, now: datetime) -> Admission:
        """Reserve for `tick_id`'s run (kept until `spawned` or `unadmit`); a refusal holds nothing."""
        held = self._admitted.get(tick_id)
        if held is not None:
            return Admission(True)
        self._collect()
        if not self._usable():
            return Admission(False, "unavailable", self.unavailable or "")
        lease = Lease(f"{tick_id}.{uuid.uuid4().hex[:8]}", self.agent, cadence, self.host, self.pid, tick_id,
                      float(estimate.tokens), float(estimate.usd))
        try:
            answer = self._ask(lambda: self.store.reserve(lease, now, lease_seconds=self.lease_seconds,
                                                          max_live=self.max_live),
                               late=lambda late: self._late_admission(late, lease))
        except StoreUnavailable as exc:
            self._failed(exc)
            return Admission(False, "unavailable", str(exc))
        self._up()
        if answer.admitted:
            self._admitted[tick_id] = lease
        else:
            self.last_refusal = answer
        return answer

    def first_report(self, answer: Admission, now: datetime) -> bool:
        """True once per refused scope, window and reset: the refusal's event is logged once, not every loop."""
        key = (answer.reason or "", f"{answer.scope}/{answer.window}/{answer.never_fits}",
               iso(answer.resets_at) if answer.resets_at else "")
        if answer.reason == "live_cap" or key in self._announced:
            return False
        if len(self._announced) >= 256:  # old windows' keys: forget them rather than grow
            self._announced.clear()
        self._announced.add(key)
        return True

    def spawned(self, tick_id: str) -> str | None:
        """`tick_id`'s sub-session started: its lease is now a live run's; its run id (None: no admission)."""
        lease = self._admitted.pop(tick_id, None)
        if lease is None:
            return None
        self._live[lease.run_id] = lease
        return lease.run_id

    def unadmit(self) -> None:
        """Give back every admission that did not become a spawn (nothing was spent)."""
        for lease in list(self._admitted.values()):
            self._push({"op": "release", "run_id": lease.run_id})
        self._admitted.clear()

    # -- after a run -------------------------------------------------------
    def settle(self, run_id: str | None, *, tokens: float, usd: float, measured: bool) -> None:
        """Charge a finished run (its ledger row is written already); never raises: the outbox keeps it."""
        if run_id is None:
            return
        lease = self._live.pop(run_id, None)
        entry: dict[str, Any] = {"op": "settle", "run_id": run_id, "tokens": float(tokens), "usd": float(usd),
                                 "measured": bool(measured), "ts": iso(self.clock.now())}
        if lease is not None:
            entry.update(agent=lease.agent, cadence=lease.cadence, host=lease.host, tick=lease.tick)
        self._push(entry)

    def _push(self, entry: dict[str, Any]) -> None:
        """Send `entry` to the store now if it can be reached, else keep it in the outbox for `flush`."""
        if self._pending or not self._usable() or not self._send(entry):
            self._pending.append(entry)
            self._save_outbox()

    def _send(self, entry: dict[str, Any]) -> bool:
        try:
            if entry["op"] == "release":
                self._ask(lambda: self.store.release(entry["run_id"]))
            else:
                lease = None
                if "agent" in entry:
                    lease = Lease(entry["run_id"], entry["agent"], entry["cadence"], entry["host"], 0,
                                  entry["tick"], 0.0, 0.0)
                self._ask(lambda: self.store.settle(entry["run_id"], tokens=entry["tokens"], usd=entry["usd"],
                                                    measured=entry["measured"], now=parse_iso(entry["ts"]),
                                                    lease=lease))
        except StoreUnavailable as exc:
            self._failed(exc)
            return False
        self._up()
        return True

    def flush(self) -> int:
        """Push what the outbox holds, oldest first; how many are left."""
        if not self._pending or not self._usable():
            return len(self._pending)
        sent = 0
        for entry in self._pending:
            if not self._send(entry):
                break
            sent += 1
        if sent:
            del self._pending[:sent]
            self._save_outbox()
            self.events.emit("governor_outbox_pushed", pushed=sent, left=len(self._pending))
        return len(self._pending)

    # -- housekeeping --------------------------------------------------------
    def start(self) -> None:
        """At start-up: charge the leases an earlier process of this agent left on this host, push the outbox."""
        self.housekeep()

    def housekeep(self) -> None:
        """Reclaim (once), push the outbox, renew live leases every third of a lease, prune old charges hourly."""
        self._collect()
        if not self._usable():
            return
        now = self.clock.now()
        mono = self.clock.monotonic()
        try:
            if not self._reclaimed:
                count = self._ask(lambda: self.store.reclaim(self.agent, self.host, self.pid, now))
                self._reclaimed = True
                if count:
                    self.events.emit("governor_reclaimed", level="warn", leases=count,
                                     reason="a run of an earlier process of this agent was charged its reservation")
            if self._renewed_at is None or mono - self._renewed_at >= self.lease_seconds / 3:
                held = list(self._held_ids())
                self._ask(lambda: self.store.renew(held, now, lease_seconds=self.lease_seconds))
                self._renewed_at = mono
            if self._pruned_at is None or mono - self._pruned_at >= PRUNE_SECONDS:
                self._ask(lambda: self.store.prune(now))
                self._pruned_at = mono
        except StoreUnavailable as exc:
            self._failed(exc)
            return
        self._up()
        self.flush()

    def _held_ids(self) -> Iterable[str]:
        """Run ids whose reservation must stay held: live runs, admissions, and settles not yet pushed."""
        ids = set(self._live) | {lease.run_id for lease in self._admitted.values()}
        return ids | {e["run_id"] for e in self._pending if e.get("op") == "settle"}

    # -- availability ------------------------------------------------------
    def _usable(self) -> bool:
        return self.unavailable is None or self.clock.monotonic() >= self._retry_at

    def _failed(self, exc: StoreUnavailable) -> None:
        """A call failed: an outage, unless the store is only slow to answer (then the next call asks again)."""
        if not isinstance(exc, StoreSlow):
            self._down(str(exc))

    def _down(self, reason: str) -> None:
        self._retry_at = self.clock.monotonic() + RETRY_SECONDS
        if self.unavailable is None:
            self.unavailable_since = self.clock.now()
            self.events.emit("governor_unavailable", level="error", store=mask_url(self.store.url), reason=reason,
                             effect="no sub-session spawns until the store answers; inline work goes on")
        self.unavailable = reason

    def _up(self) -> None:
        if self.unavailable is not None:
            self.events.emit("governor_available", level="warn", store=mask_url(self.store.url),
                             down_since=iso(self.unavailable_since) if self.unavailable_since else None)
        self.unavailable = None
        self.unavailable_since = None

    def status(self) -> dict[str, Any]:
        """The `governor` block of the status file."""
        return {"store": mask_url(self.store.url), "agent": self.agent, "available": self.unavailable is None,
                "reason": self.unavailable,
                "since": iso(self.unavailable_since) if self.unavailable_since else None,
                "live_here": len(self._live), "outbox": len(self._pending), "max_live": self.max_live}

    # -- the outbox file -----------------------------------------------------
    def _load_outbox(self) -> list[dict[str, Any]]:
        try:
            with open(self.outbox, "rb") as file:
                lines = file.read().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                entry = json.loads(line[:MAX_OUTBOX_LINE])
            except ValueError:
                continue  # a torn last line: the settle it held is also in the ledger
            if isinstance(entry, dict) and entry.get("op") in ("settle", "release") and entry.get("run_id"):
                out.append(entry)
        return out

    def _save_outbox(self) -> None:
        if not self._pending:
            try:
                os.unlink(self.outbox)
            except FileNotFoundError:
                pass
            return
        data = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in self._pending)
        atomic_write(self.outbox, data.encode())

    def close(self) -> None:
        self.unadmit()
        self._worker.shutdown(wait=False, cancel_futures=True)
        self.store.close()
