"""The governor store: one budget and one live cap shared by many agent roots.

A store holds four things: limits (per scope and window), reservations (one per live sub-session, with a
lease renewed while the run lives), charges (one per settled run, idempotent by run id) and nothing else:
the live count is the number of reservations. `maestro_py.fleet.open_store(url)` picks the implementation —
`sqlite:////abs/path.db` (one machine, embedded) or `postgresql://…` (many machines) — and both run the same
SQL through `SqlStore`; only how a connection is made and how the one writer is chosen differ.

`reserve` is one transaction that refuses as a whole: expired leases are charged first, then a full pool is
refused before any budget is looked at, then every limit that applies must cover the reservation, and only
then is the row written. Writers are serialised (SQLite's write lock; a row lock in PostgreSQL), so two
reservers never both see the last slot or the last dollar: the fleet overshoots a limit by at most what its
live runs spend beyond their reservations, never by a reservation.

Any failure to reach the store raises `StoreUnavailable`; the caller fails closed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from maestro_py.clock import iso
from maestro_py.errors import ConfigError
from maestro_py.fleet.model import (WINDOWS, Admission, Lease, ScopeLimit, StoreUnavailable, axis, check_scope, over,
                                    scopes_of)
from maestro_py.fleet.schema import SCHEMA
from maestro_py.redact import mask_url
from maestro_py.policy.budget import Limit, amount, window_bounds

KEEP_CHARGES_SECONDS = 40 * 86400  # longer than the longest window: older charges are pruned
TOP = 5  # agents and cadences listed per scope in a summary


LIVE = "SELECT COUNT(*) FROM maestro_reservations WHERE expires_at > ?"  # the fleet's live runs at a time
_FILTERS = {"fleet": "1=1", "agent": "agent = ?", "cadence": "agent = ? AND cadence = ?"}


def _filter(scope: str) -> tuple[str, tuple[str, ...]]:
    """The WHERE clause and parameters selecting `scope`'s rows."""
    kind, _, rest = scope.partition(":")
    return _FILTERS[kind], tuple(rest.split("/")) if rest else ()


def _epoch(dt: datetime) -> float:
    return dt.timestamp()


class SqlStore:
    """The store's logic in portable SQL (`?` placeholders); subclasses connect and pick the one writer."""

    url: str

    # -- what subclasses provide ----------------------------------------------------
    def _connect(self) -> Any:
        raise NotImplementedError

    def _begin(self, cur: Any, *, write: bool, serial: bool) -> None:
        """Start a transaction: `write` may write; `serial` runs beside no other serial one (a reserve)."""
        raise NotImplementedError

    def _sql(self, text: str) -> str:
        return text

    def _skew(self, cur: Any) -> float:
        """Seconds the store's clock is ahead of this machine's (0: the store is on this machine)."""
        return 0.0

    def _time(self, cur: Any, now: datetime) -> tuple[float, datetime]:
        """`now` on the store's clock (epoch, datetime): a client whose clock is off expires no other's lease."""
        t = _epoch(now) + self._skew(cur)
        return t, datetime.fromtimestamp(t, timezone.utc)

    def _deadline(self, conn: Any) -> Any:  # a bound on how long one call may wait on the store (none by default)
        return nullcontext()

    def _errors(self) -> tuple[type[BaseException], ...]:
        raise NotImplementedError

    # -- plumbing -------------------------------------------------------------------
    _conn: Any = None

    def _same_store(self) -> bool:  # False once the connection no longer reaches the store its URL names
        return True

    def _connection(self) -> Any:
        if self._conn is not None and not self._same_store():
            self.close()  # never go on with a hidden copy: open what the URL names now, or fail closed
        if self._conn is None:
            conn = self._connect()
            try:
                cur = conn.cursor()
                self._begin(cur, write=True, serial=False)
                self._init_first(cur)
                for statement in SCHEMA:
                    cur.execute(statement)
                self._init_extra(cur)
                conn.commit()
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _init_first(self, cur: Any) -> None:
        """What a subclass does before the schema is created (in the same transaction)."""

    def _init_extra(self, cur: Any) -> None:
        """More schema a subclass needs (created in the same transaction)."""

    def _run(self, work: Any, *, write: bool, serial: bool = False) -> Any:
        """`work(cursor)` in one transaction; a store error rolls back and raises StoreUnavailable.

        A connection kept from an earlier call may have died meanwhile (a server restart): the transaction is
        tried once more on a new one before the store counts as unavailable (each `work` is one transaction
        that either committed or did nothing, and settles are idempotent)."""
        for fresh in ((False, True) if self._conn is not None else (True,)):
            try:
                return self._attempt(work, write=write, serial=serial)
            except self._errors() as exc:
                self.close()
                if fresh:
                    raise StoreUnavailable(f"governor store {mask_url(self.url)}: {_first_line(exc)}") from None
        raise AssertionError("unreachable")

    def _attempt(self, work: Any, *, write: bool, serial: bool) -> Any:
        conn = self._connection()
        cur = conn.cursor()
        try:
            with self._deadline(conn):
                self._begin(cur, write=write, serial=serial)
                result = work(cur)
                conn.commit()
            return result
        except BaseException:
            try:
                conn.rollback()
            except self._errors():
                self.close()
            raise

    def _q(self, cur: Any, text: str, params: Sequence[Any] = ()) -> Any:
        cur.execute(self._sql(text), tuple(params))
        return cur

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""
        self._run(lambda cur: self._q(cur, "SELECT 1").fetchone(), write=False)

    # -- limits ---------------------------------------------------------------------
    def set_limit(self, scope: str, window: str, *, tokens: int | None = None, usd: float | None = None,
                  tz: str | None = None) -> None:
        """Set `scope`'s `window` limit (tokens and/or dollars; None leaves that axis as it was)."""
        check_scope(scope)
        if window not in WINDOWS:
            raise ConfigError(f"window {window!r}: use one of {', '.join(WINDOWS)}")

        def work(cur: Any) -> None:
            row = self._q(cur, "SELECT tokens, usd, tz FROM maestro_limits WHERE scope = ? AND period = ?",
                          (scope, window)).fetchone()
            old_t, old_u, old_tz = row if row else (None, None, None)
            new = (tokens if tokens is not None else old_t, usd if usd is not None else old_u,
                   tz if tz is not None else old_tz)
            self._q(cur, "DELETE FROM maestro_limits WHERE scope = ? AND period = ?", (scope, window))
            self._q(cur, "INSERT INTO maestro_limits (scope, period, tokens, usd, tz) VALUES (?, ?, ?, ?, ?)",
                    (scope, window, *new))

        self._run(work, write=True)

    def unset_limit(self, scope: str, window: str | None = None) -> int:
        """Remove `scope`'s limit in `window` (every window if None); how many were removed."""
        check_scope(scope)

        def work(cur: Any) -> int:
            if window is None:
                return self._q(cur, "DELETE FROM maestro_limits WHERE scope = ?", (scope,)).rowcount
            return self._q(cur, "DELETE FROM maestro_limits WHERE scope = ? AND period = ?", (scope, window)).rowcount

        return int(self._run(work, write=True))

    def limits(self) -> list[ScopeLimit]:
        def work(cur: Any) -> list[ScopeLimit]:
            rows = self._q(cur, "SELECT scope, period, tokens, usd, tz FROM maestro_limits ORDER BY scope, period")
            return [ScopeLimit(s, w, Limit(None if t is None else int(t), u), tz) for s, w, t, u, tz in rows.fetchall()]

        return list(self._run(work, write=False))

    # -- reserve, renew, settle -----------------------------------------------------
    def reserve(self, lease: Lease, now: datetime, *, lease_seconds: float, max_live: int | None) -> Admission:
        """Hold a live slot and `lease`'s amounts for one run, or refuse as a whole (nothing written)."""
        def work(cur: Any) -> Admission:
            t, at = self._time(cur, now)
            self._expire(cur, t)
            live = int(self._q(cur, LIVE, (t,)).fetchone()[0])
            refused = self._refusal(cur, lease, at, max_live, live)
            if refused is not None:
                return refused
            self._q(cur, "INSERT INTO maestro_reservations (run_id, agent, cadence, host, pid, tick, tokens, usd, "
                         "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (lease.run_id, lease.agent, lease.cadence, lease.host, lease.pid, lease.tick, lease.tokens,
                     lease.usd, t, t + lease_seconds))
            return Admission(True, live=live + 1)

        return self._run(work, write=True, serial=True)

    def would_admit(self, lease: Lease, now: datetime, *, max_live: int | None) -> Admission:
        """What `reserve` would answer now, nothing written (for the views); an expired lease counts as `reserve`'s
        charge of it would: the same amount."""
        def work(cur: Any) -> Admission:
            t, at = self._time(cur, now)
            live = int(self._q(cur, LIVE, (t,)).fetchone()[0])
            return self._refusal(cur, lease, at, max_live, live) or Admission(True, live=live + 1)
        return self._run(work, write=False)

    def _refusal(self, cur: Any, lease: Lease, now: datetime, max_live: int | None, live: int) -> Admission | None:
        """A full pool of `live` runs first, then the budgets (`_shortfall`); None if `lease` fits."""
        if max_live is not None and live >= max_live:
            return Admission(False, "live_cap", f"the fleet runs {live} sub-sessions, MAESTRO_FLEET_MAX_LIVE="
                             f"{max_live}", live=live)
        short = self._shortfall(cur, lease, now)
        return replace(short, live=live) if short is not None else None

    def _shortfall(self, cur: Any, lease: Lease, now: datetime) -> Admission | None:
        """The first limit that cannot cover `lease` (one it can never cover first), or None."""
        scopes = scopes_of(lease.agent, lease.cadence)
        marks = ", ".join("?" for _ in scopes)
        rows = self._q(cur, f"SELECT scope, period, tokens, usd, tz FROM maestro_limits WHERE scope IN ({marks})",
                       scopes).fetchall()
        limits = [ScopeLimit(s, w, Limit(None if tk is None else int(tk), u), tz) for s, w, tk, u, tz in rows]
        limits.sort(key=lambda sl: (scopes.index(sl.scope), WINDOWS.index(sl.window)))
        for sl in limits:  # a reset will not help these
            unit = over(sl.limit, lease.tokens, lease.usd)
            if unit is not None:
                resets = window_bounds(sl.window, now, sl.zone())[1]
                return Admission(False, "budget", f"one run reserves {amount(unit, getattr(lease, unit))}, more "
                                 f"than the whole {sl.scope} {sl.window} limit of {amount(unit, axis(sl.limit, unit))}",
                                 sl.scope, sl.window, resets, never_fits=True)
        for sl in limits:
            start, resets = window_bounds(sl.window, now, sl.zone())
            where, params = _filter(sl.scope)
            # One statement, so one snapshot: settles are not serialised with reserves, and under PostgreSQL's
            # READ COMMITTED a settle committing between two statements (its charge not yet seen, its reservation
            # already gone) would hide that run's amount from both sums and admit one run too many.
            charged = f"FROM maestro_charges WHERE ts >= ? AND {where}"
            held = f"FROM maestro_reservations WHERE {where}"
            spent_t, spent_u, held_t, held_u = self._q(
                cur, f"SELECT (SELECT COALESCE(SUM(tokens), 0) {charged}), (SELECT COALESCE(SUM(usd), 0) {charged}), "
                     f"(SELECT COALESCE(SUM(tokens), 0) {held}), (SELECT COALESCE(SUM(usd), 0) {held})",
                (_epoch(start), *params, _epoch(start), *params, *params, *params)).fetchone()
            for unit, cap, used, want in (("tokens", sl.limit.tokens, spent_t + held_t, lease.tokens),
                                          ("usd", sl.limit.usd, spent_u + held_u, lease.usd)):
                if cap is not None and cap - used < want:
                    left = max(0.0, cap - used)
                    return Admission(False, "budget", f"the {sl.scope} {sl.window} budget has {amount(unit, left)} "
                                     f"left, less than one run's reservation of {amount(unit, want)}, until "
                                     f"{iso(resets)}", sl.scope, sl.window, resets)
        return None

    def _expire(self, cur: Any, t: float) -> int:
        """Charge every reservation whose lease has run out at its reserved amount (its run's holder is gone)."""
        self._q(cur, "INSERT INTO maestro_charges (run_id, agent, cadence, host, tick, ts, tokens, usd, measured, "
                     "source) SELECT run_id, agent, cadence, host, tick, ?, tokens, usd, 0, 'lease_expired' "
                     "FROM maestro_reservations WHERE expires_at <= ? ON CONFLICT (run_id) DO NOTHING", (t, t))
        return int(self._q(cur, "DELETE FROM maestro_reservations WHERE expires_at <= ?", (t,)).rowcount)

    def renew(self, run_ids: Iterable[str], now: datetime, *, lease_seconds: float) -> int:
        """Push out the leases of runs that still live; how many were still held."""
        ids = list(run_ids)
        if not ids:
            return 0

        def work(cur: Any) -> int:
            t = self._time(cur, now)[0]
            marks = ", ".join("?" for _ in ids)
            return int(self._q(cur, f"UPDATE maestro_reservations SET expires_at = ? WHERE run_id IN ({marks})",
                               (t + lease_seconds, *ids)).rowcount)

        return int(self._run(work, write=True))

    def settle(self, run_id: str, *, tokens: float, usd: float, measured: bool, now: datetime,
               lease: Lease | None = None) -> None:
        """Charge a finished run and drop its reservation; idempotent by `run_id`. A charge made when its lease
        expired is replaced by this one (the run's holder came back with its real figures)."""
        def work(cur: Any) -> None:
            t = self._time(cur, now)[0]
            row = self._q(cur, "SELECT agent, cadence, host, tick FROM maestro_reservations WHERE run_id = ?",
                          (run_id,)).fetchone()
            who = row or ((lease.agent, lease.cadence, lease.host, lease.tick) if lease else None)
            if who is None:
                who = self._q(cur, "SELECT agent, cadence, host, tick FROM maestro_charges WHERE run_id = ?",
                              (run_id,)).fetchone()
                if who is None:
                    return  # nothing known of this run: nothing to charge it to
            self._q(cur, "INSERT INTO maestro_charges (run_id, agent, cadence, host, tick, ts, tokens, usd, measured, "
                         "source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'settled') ON CONFLICT (run_id) DO UPDATE SET "
                         "ts = excluded.ts, tokens = excluded.tokens, usd = excluded.usd, measured = excluded.measured, "
                         "source = excluded.source WHERE maestro_charges.source = 'lease_expired'",
                    (run_id, *who, t, float(tokens), float(usd), int(measured)))
            self._q(cur, "DELETE FROM maestro_reservations WHERE run_id = ?", (run_id,))

        self._run(work, write=True)

    def release(self, run_id: str) -> None:
        """Drop a reservation whose run never started (nothing was spent)."""
        self._run(lambda cur: self._q(cur, "DELETE FROM maestro_reservations WHERE run_id = ?", (run_id,)),
                  write=True)

    def reclaim(self, agent: str, host: str, pid: int, now: datetime) -> int:
        """Charge, now, the leases an earlier process of `agent` on `host` left (it died mid-run: one daemon per
        agent root, so any other pid is gone); how many."""
        def work(cur: Any) -> int:
            t = self._time(cur, now)[0]
            self._q(cur, "UPDATE maestro_reservations SET expires_at = ? WHERE agent = ? AND host = ? AND pid <> ?",
                    (t, agent, host, pid))
            return self._expire(cur, t)

        return int(self._run(work, write=True, serial=True))

    def prune(self, now: datetime) -> int:
        """Drop charges older than every window (the store stays bounded); how many."""
        cutoff = _epoch(now) - KEEP_CHARGES_SECONDS
        return int(self._run(lambda cur: self._q(cur, "DELETE FROM maestro_charges WHERE ts < ?", (cutoff,)).rowcount,
                             write=True))

    # -- reading ----------------------------------------------------------------------
    def live(self, now: datetime) -> list[dict[str, Any]]:
        """The reservations held now (expired ones included until the next write charges them)."""
        def work(cur: Any) -> list[dict[str, Any]]:
            rows = self._q(cur, "SELECT run_id, agent, cadence, host, pid, tick, tokens, usd, expires_at FROM "
                                "maestro_reservations ORDER BY created_at").fetchall()
            keys = ("run_id", "agent", "cadence", "host", "pid", "tick", "tokens", "usd", "expires_at")
            return [dict(zip(keys, r)) for r in rows]

        return list(self._run(work, write=False))

    def charges(self) -> list[dict[str, Any]]:
        """Every charge the store holds (tests and reports)."""
        def work(cur: Any) -> list[dict[str, Any]]:
            rows = self._q(cur, "SELECT run_id, agent, cadence, host, tick, ts, tokens, usd, measured, source FROM "
                                "maestro_charges ORDER BY ts").fetchall()
            keys = ("run_id", "agent", "cadence", "host", "tick", "ts", "tokens", "usd", "measured", "source")
            return [dict(zip(keys, r)) for r in rows]

        return list(self._run(work, write=False))

    def summary(self, now: datetime) -> list[dict[str, Any]]:
        """Per limit (and the fleet's daily spend, always): spent, reserved, remaining, reset, top agents/cadences."""
        def work(cur: Any) -> list[dict[str, Any]]:
            rows = self._q(cur, "SELECT scope, period, tokens, usd, tz FROM maestro_limits").fetchall()
            limits = [ScopeLimit(s, w, Limit(None if tk is None else int(tk), u), tz) for s, w, tk, u, tz in rows]
            if not any(sl.scope == "fleet" and sl.window == "daily" for sl in limits):
                limits.append(ScopeLimit("fleet", "daily", Limit()))
            limits.sort(key=lambda sl: (sl.scope != "fleet", sl.scope, WINDOWS.index(sl.window)))
            return [self._figures(cur, sl, now) for sl in limits]

        return list(self._run(work, write=False))

    def _figures(self, cur: Any, sl: ScopeLimit, now: datetime) -> dict[str, Any]:
        start, resets = window_bounds(sl.window, now, sl.zone())
        where, params = _filter(sl.scope)
        spent_t, spent_u, runs = self._q(cur, f"SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(usd), 0), COUNT(*) "
                                              f"FROM maestro_charges WHERE ts >= ? AND {where}",
                                         (_epoch(start), *params)).fetchone()
        held_t, held_u, live = self._q(cur, f"SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(usd), 0), COUNT(*) FROM "
                                            f"maestro_reservations WHERE {where}", params).fetchone()
        top: dict[str, list[dict[str, Any]]] = {}
        for column, key in (("agent", "top_agents"), ("agent || '/' || cadence", "top_cadences")):
            rows = self._q(cur, f"SELECT {column}, SUM(usd), SUM(tokens) FROM maestro_charges WHERE ts >= ? AND "
                                f"{where} GROUP BY {column} ORDER BY SUM(usd) DESC, SUM(tokens) DESC LIMIT {TOP}",
                           (_epoch(start), *params)).fetchall()
            name = "agent" if column == "agent" else "cadence"
            top[key] = [{name: r[0], "usd": round(float(r[1]), 6), "tokens": round(float(r[2]))} for r in rows]
        lim = sl.limit
        return {
            "scope": sl.scope, "window": sl.window, "tz": sl.tz, "window_start": iso(start), "resets_at": iso(resets),
            "total": {"tokens": lim.tokens, "usd": lim.usd},
            "spent": {"tokens": round(float(spent_t)), "usd": round(float(spent_u), 6)},
            "reserved": {"tokens": round(float(held_t)), "usd": round(float(held_u), 6)},
            "remaining": {
                "tokens": None if lim.tokens is None else round(lim.tokens - float(spent_t) - float(held_t)),
                "usd": None if lim.usd is None else round(lim.usd - float(spent_u) - float(held_u), 6),
            },
            "runs": int(runs), "live": int(live), **top,
        }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
