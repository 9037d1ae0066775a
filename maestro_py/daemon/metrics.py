"""Prometheus metrics in `state/metrics.prom`, for node_exporter's textfile collector.

The daemon keeps its per-cadence figures in memory, fed by its own events (ticks settled, spawns, successes)
and ledger rows (tokens and dollars per model), and renders them with the rest (queues, refusals, budgets,
breakers) when it writes its status: a fresh `CollectorRegistry` each time, published by one rename, so a
scrape never reads half a file. Counters start at 0 with the daemon, as Prometheus counters do
(`maestro_start_time_seconds` says when); the event log and the ledger stay the source of truth.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from maestro_py import __version__
from maestro_py.bus.fsio import atomic_write
from maestro_py.paths import Folder, Layout
from maestro_py.policy.breaker import AUTH_HALT, CLAUDE_MISSING, QUOTA_HOLD, State
from maestro_py.policy.guardrails import Refusal

if TYPE_CHECKING:
    from maestro_py.bus.events import EventLog
    from maestro_py.bus.store import Bus
    from maestro_py.clock import Clock
    from maestro_py.daemon.live import LiveRuns
    from maestro_py.policy.guardrails import Guardrails
    from maestro_py.registry import Registry
    from maestro_py.session.ledger import Ledger

WRITE_EVERY = 1.0      # seconds between rewrites while things change (a scrape comes every 15-60 s anyway)
HEARTBEAT_EVERY = 5.0  # seconds between rewrites of a file whose figures did not change (its heartbeat)
RESCAN_EVERY = 60.0    # seconds between counts of done/ and dlq/; in between, the daemon's own moves are added
MAX_CADENCES = 200     # distinct cadence label values; later ones are folded into OTHER (bounded series)
MAX_MODELS = 50        # the same for model names, which come from the CLI's output
OTHER = "_other"
UNKNOWN_MODEL = "_unknown"  # a cost the CLI reported without a per-model breakdown

# Event stage -> the `outcome` label of a settled tick (None: the `done` event's own outcome).
SETTLED: dict[str, str | None] = {"done": None, "retry": "retry", "requeued": "requeued", "dlq": "dlq"}
DONE_OUTCOMES = ("ok", "nothing_to_do", "skipped_overlap", "killed")  # a done/ tick's outcomes; anything else is "other"
OUTCOMES = (*DONE_OUTCOMES, "retry", "requeued", "dlq")
SUCCESS = ("ok", "nothing_to_do")  # the duty ran and completed (a guard finding nothing to do is a success)
TOKEN_KINDS = {"input_tokens": "input", "output_tokens": "output", "cache_read_tokens": "cache_read",
               "cache_creation_tokens": "cache_creation"}
BREAKER_STATE = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}
REFUSALS = (*(r.value for r in Refusal), "deferred_registry")
_WATCHED = frozenset((*SETTLED, "spawned", "quarantined", "pruned"))


class Bounded:
    """Label values as given until `limit` distinct ones are known, then OTHER: a hostile tick or CLI output
    must not be able to create series without end. Values `always` accepts (the registry's cadences) always
    get their own."""

    def __init__(self, limit: int, always: Callable[[str], bool] = lambda value: False) -> None:
        self.limit = limit
        self.always = always
        self.known: set[str] = set()

    def __call__(self, value: Any) -> str:
        text = "_none" if value is None or value == "" else str(value)
        if text in self.known:
            return text
        if len(self.known) >= self.limit and not self.always(text):
            return OTHER
        self.known.add(text)
        return text


class Depth:
    """A folder that may hold tens of thousands of ticks, counted every RESCAN_EVERY seconds (or when told it
    changed behind our back), with the daemon's own moves into it added in between."""

    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count
        self.value = 0
        self._at: float | None = None

    def add(self) -> None:
        self.value += 1

    def invalidate(self) -> None:
        self._at = None

    def get(self, now: float, *, fresh: bool = False) -> int:
        if fresh or self._at is None or now - self._at >= RESCAN_EVERY:
            self.value, self._at = self._count(), now
        return self.value


class Families:
    """A collector that yields metric families built beforehand, every sample labelled with its agent: one
    machine's node_exporter may read the files of several roots, and their series must not clash."""

    def __init__(self, families: Iterable[Metric], agent: str) -> None:
        self._families = list(families)
        for family in self._families:
            family.samples = [s._replace(labels={"agent": agent, **s.labels}) for s in family.samples]

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class Metrics:
    """The daemon's metrics: figures kept from its events and ledger rows, written with its status."""

    def __init__(self, *, layout: Layout, bus: Bus, live: LiveRuns, guardrails: Guardrails, counters: Counter[str],
                 registry: Callable[[], Registry], events: EventLog, ledger: Ledger, clock: Clock,
                 started_at: float, agent: str) -> None:
        self.layout = layout
        self.agent = agent  # MAESTRO_AGENT_NAME, else the root folder's name: the `agent` label of every sample
        self.bus = bus
        self.live = live
        self.guardrails = guardrails
        self.counters = counters
        self.registry = registry
        self.events = events
        self.clock = clock
        self.started_at = started_at  # unix seconds
        self.stderr_dropped: Callable[[], int] | None = None  # set when events also go to stderr (console.py)
        self.failures = 0
        self._cadence = Bounded(MAX_CADENCES, always=lambda name: registry().get(name) is not None)
        self._model = Bounded(MAX_MODELS)
        self._settled: Counter[tuple[str, str]] = Counter()
        self._spawns: Counter[str] = Counter()
        self._last_success: dict[str, float] = {}
        self._runs: Counter[tuple[str, str]] = Counter()
        self._unmetered: Counter[str] = Counter()
        self._denied_runs: Counter[str] = Counter()  # runs the CLI denied a tool call, and the calls denied
        self._denials: Counter[str] = Counter()
        self._tokens: Counter[tuple[str, str, str]] = Counter()
        self._usd: dict[tuple[str, str], float] = {}
        self._charged_tokens: Counter[str] = Counter()
        self._charged_usd: dict[str, float] = {}
        self._depth = {folder: Depth(lambda f=folder: bus.depth(f)) for folder in (Folder.DONE, Folder.DLQ)}
        self._changes = 0
        self._written: tuple[Any, float] | None = None  # what the last file showed (its key), and when
        events.listeners.append(self.on_event)
        ledger.listeners.append(self.on_row)

    # -- fed by the daemon ----------------------------------------------------------------------------
    def on_event(self, event: Mapping[str, Any]) -> None:
        """Count a settled tick, a spawn, a success, or a change to done/ or dlq/ (every event passes here)."""
        stage = event.get("stage")
        if stage not in _WATCHED:
            return
        self._changes += 1
        if stage == "spawned":
            self._spawns[self._cadence(event.get("cadence"))] += 1
        elif stage == "quarantined":
            self._depth[Folder.DLQ].add()
        elif stage == "pruned":
            self._depth[Folder.DONE].invalidate()
        else:
            cadence = self._cadence(event.get("cadence"))
            outcome = SETTLED[stage] or str(event.get("outcome"))
            if stage == "done":
                self._depth[Folder.DONE].add()
                if outcome in SUCCESS:
                    self._last_success[cadence] = self.clock.now().timestamp()
                if outcome not in DONE_OUTCOMES:
                    outcome = "other"
            elif stage == "dlq":
                self._depth[Folder.DLQ].add()
            self._settled[cadence, outcome] += 1

    def on_row(self, row: Mapping[str, Any]) -> None:
        """Add a sub-session's ledger row: its result, tokens and dollars per model, and what it was charged."""
        self._changes += 1
        cadence = self._cadence(row.get("cadence"))
        self._runs[cadence, "ok" if row.get("ok") else "failed"] += 1
        if not row.get("metered"):
            self._unmetered[cadence] += 1
        denied = row.get("denials") if isinstance(row.get("denials"), dict) else {}
        if denied.get("count"):
            self._denied_runs[cadence] += 1
            self._denials[cadence] += _count(denied.get("count"))
        self._charged_tokens[cadence] += _count(row.get("charged_tokens"))
        self._charged_usd[cadence] = self._charged_usd.get(cadence, 0.0) + _amount(row.get("charged_usd"))
        per_model = row.get("per_model") if isinstance(row.get("per_model"), dict) else {}
        for model, usage in per_model.items():
            if isinstance(usage, dict):
                label = self._model(model)
                for key, kind in TOKEN_KINDS.items():
                    self._tokens[cadence, label, kind] += _count(usage.get(key))
        costs = [(self._model(m), u.get("cost_usd")) for m, u in per_model.items() if isinstance(u, dict)]
        if not costs or any(_number(cost) is None for _, cost in costs):
            costs = [(UNKNOWN_MODEL, row.get("cost_usd"))]  # no breakdown: the run's cost, unattributed
        for label, cost in costs:
            if _number(cost) is not None:
                self._usd[cadence, label] = self._usd.get((cadence, label), 0.0) + float(cost)

    # -- the file -------------------------------------------------------------------------------------
    def write(self, doc: Mapping[str, Any]) -> None:
        """Rewrite `state/metrics.prom` from the status document `doc` (and the figures kept here) when due: at
        most every WRITE_EVERY seconds while something changes, every HEARTBEAT_EVERY seconds otherwise, and
        always when the daemon stops. Never raises: metrics must not stop the work."""
        now = self.clock.monotonic()
        final = doc.get("state") == "stopped"
        key = (self._changes, doc.get("state"), doc.get("queued"), doc.get("emergency_stop"), len(self.live),
               doc.get("counters"), doc.get("governor"))
        if self._written is not None and not final:
            last_key, at = self._written
            if now - at < WRITE_EVERY or (key == last_key and now - at < HEARTBEAT_EVERY):
                return
        try:
            data = self.render(doc, final=final)
            atomic_write(self.layout.metrics_file, data, mode=0o644, tmp_dir=self.layout.folder(Folder.TMP),
                         durable=False)
        except Exception as exc:  # noqa: BLE001 - a full disk or a bug here must not take the loop down
            self.failures += 1
            if self.failures == 1:  # once per run of failures, not once per status write
                self.events.emit("metrics_write_failed", level="error", file=str(self.layout.metrics_file),
                                 error=f"{type(exc).__name__}: {exc}")
            return
        self.failures = 0
        self._written = (key, now)

    def render(self, doc: Mapping[str, Any], *, final: bool = False) -> bytes:
        """The exposition text: a fresh registry holding this moment's families."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Families(self.families(doc, final=final), self.agent))
        return generate_latest(registry)

    def families(self, doc: Mapping[str, Any], *, final: bool = False) -> Iterator[Metric]:
        """Every metric family, from `doc` (queued, budget, governor) and the figures kept here."""
        now = self.clock.now().timestamp()
        yield _gauge("maestro_up", "1 while the daemon runs; 0 once it stopped cleanly", 0 if final else 1)
        yield _gauge("maestro_start_time_seconds", "When the daemon started (unix seconds); counters start at 0 then",
                     self.started_at)
        yield _gauge("maestro_heartbeat_timestamp_seconds", "When the loop last wrote this file (unix seconds)", now)
        yield _gauge("maestro_build_info", "The daemon's version", 1, version=__version__)
        cadences = [self._cadence(name) for name in self.registry().names()]
        yield from self._queues(doc, fresh=final)
        yield from self._ticks(cadences)
        yield from self._spend()
        yield from self._budget(doc.get("budget") or [])
        yield from self._halts(doc, cadences)

    def _queues(self, doc: Mapping[str, Any], *, fresh: bool) -> Iterator[Metric]:
        mono = self.clock.monotonic()
        depth = GaugeMetricFamily("maestro_queue_depth", "Ticks in each bus folder", labels=["folder"])
        depth.add_metric([Folder.INBOX.value], int(doc.get("queued") or 0))
        depth.add_metric([Folder.CLAIMED.value], self.bus.depth(Folder.CLAIMED))  # a few files: counted each time
        for folder, count in self._depth.items():
            depth.add_metric([folder.value], count.get(mono, fresh=fresh))
        yield depth
        yield _gauge("maestro_live_subsessions", "Live claude sub-sessions", len(self.live))
        yield _gauge("maestro_live_subsessions_limit", "MAESTRO_MAX_LIVE_SUBSESSIONS", self.live.max_live)

    def _ticks(self, names: list[str]) -> Iterator[Metric]:
        settled = CounterMetricFamily("maestro_ticks_settled", "Ticks settled, by cadence and outcome (ok, "
                                      "nothing_to_do, skipped_overlap, other: done/; retry, requeued: inbox/; dlq)",
                                      labels=["cadence", "outcome"])
        figures = Counter({(n, o): 0 for n in names for o in OUTCOMES})
        figures.update(self._settled)
        for (cadence, outcome), value in sorted(figures.items()):
            settled.add_metric([cadence, outcome], value)
        yield settled
        yield _by_cadence(CounterMetricFamily("maestro_spawns", "Sub-sessions started", labels=["cadence"]),
                          {**{n: 0 for n in names}, **self._spawns})
        c = self.counters
        yield _counter("maestro_spawn_failures", "Sub-sessions that could not be started", c.get("spawn_failures", 0))
        yield _counter("maestro_ticks_claimed", "Ticks claimed", c.get("claimed", 0))
        yield _counter("maestro_ticks_reaped", "Claims of dead owners put back in inbox/", c.get("reaped", 0))
        yield _counter("maestro_ticks_quarantined", "Files moved to dlq/ as not valid ticks", c.get("quarantined", 0))
        yield _counter("maestro_io_errors", "Loop steps cut short by a disk error", c.get("io_errors", 0))
        yield _counter("maestro_internal_errors", "Loop steps cut short by a bug", c.get("internal_errors", 0))
        refusals = CounterMetricFamily("maestro_refusals", "Ticks held, left in inbox/, once per hold (the "
                                       "skipped_*/deferred_* counters of consumer.json)", labels=["reason"])
        for reason in REFUSALS:
            refusals.add_metric([reason], c.get(reason, 0))
        yield refusals
        last = GaugeMetricFamily("maestro_last_success_timestamp_seconds",
                                 "When a tick of the cadence last completed ok or with nothing to do (unix seconds)",
                                 labels=["cadence"])
        for cadence, at in sorted(self._last_success.items()):
            last.add_metric([cadence], at)
        yield last
        if self.stderr_dropped is not None:
            yield _counter("maestro_stderr_lines_dropped", "Event lines not written to a full stderr",
                           self.stderr_dropped())

    def _spend(self) -> Iterator[Metric]:
        runs = CounterMetricFamily("maestro_subsessions", "Sub-sessions settled (ledger rows), by result",
                                   labels=["cadence", "result"])
        for (cadence, result), value in sorted(self._runs.items()):
            runs.add_metric([cadence, result], value)
        yield runs
        yield _by_cadence(CounterMetricFamily("maestro_subsessions_unmetered", "Sub-sessions whose usage the CLI "
                                              "did not report (charged their reservation)", labels=["cadence"]),
                          self._unmetered)
        yield _by_cadence(CounterMetricFamily("maestro_runs_denied", "Sub-sessions the CLI denied a tool call under "
                                              "their permissions", labels=["cadence"]), self._denied_runs)
        yield _by_cadence(CounterMetricFamily("maestro_permission_denials", "Tool calls the CLI denied",
                                              labels=["cadence"]), self._denials)
        tokens = CounterMetricFamily("maestro_tokens", "Tokens the CLI reported, by model and kind",
                                     labels=["cadence", "model", "kind"])
        for (cadence, model, kind), value in sorted(self._tokens.items()):
            tokens.add_metric([cadence, model, kind], value)
        yield tokens
        usd = CounterMetricFamily("maestro_cost_usd", "Dollars the CLI reported, by model", labels=["cadence", "model"])
        for (cadence, model), value in sorted(self._usd.items()):
            usd.add_metric([cadence, model], value)
        yield usd
        yield _by_cadence(CounterMetricFamily("maestro_charged_tokens", "Tokens charged to the budgets (measured, "
                                              "or the reservation when unknown)", labels=["cadence"]),
                          self._charged_tokens)
        yield _by_cadence(CounterMetricFamily("maestro_charged_usd", "Dollars charged to the budgets",
                                              labels=["cadence"]), self._charged_usd)

    def _budget(self, rows: Iterable[Mapping[str, Any]]) -> Iterator[Metric]:
        figures = {name: GaugeMetricFamily(f"maestro_budget_{name}", text, labels=["scope", "window", "unit"])
                   for name, text in (("limit", "The budget's limit (absent: unlimited)"),
                                      ("spent", "Spent in the current window"),
                                      ("reserved", "Held by live runs"),
                                      ("remaining", "Limit - spent - reserved (absent: unlimited)"))}
        for row in rows:
            for name, family in figures.items():
                values = row.get("total" if name == "limit" else name) or {}
                for unit in ("tokens", "usd"):
                    if _number(values.get(unit)) is not None:
                        family.add_metric([str(row.get("scope")), str(row.get("window")), unit], values[unit])
        yield from figures.values()

    def _halts(self, doc: Mapping[str, Any], cadences: list[str]) -> Iterator[Metric]:
        circuits = self.guardrails.breakers.circuits
        state = GaugeMetricFamily("maestro_circuit_breaker_state", "0 closed, 1 half-open, 2 open",
                                  labels=["cadence"])
        names = set(cadences) | {self._cadence(n) for n in circuits if n not in (AUTH_HALT, CLAUDE_MISSING, QUOTA_HOLD)}
        for name in sorted(names):
            circuit = circuits.get(name)
            state.add_metric([name], BREAKER_STATE[circuit.state] if circuit is not None else 0)
        yield state

        def held(name: str) -> int:
            circuit = circuits.get(name)
            return int(circuit is not None and circuit.state is not State.CLOSED)

        yield _gauge("maestro_auth_halt", "1 while an auth failure halts every spawn", held(AUTH_HALT))
        yield _gauge("maestro_quota_hold", "1 while the subscription's usage limit holds every spawn",
                     held(QUOTA_HOLD))
        yield _gauge("maestro_claude_missing", "1 while no claude binary can be started", held(CLAUDE_MISSING))
        yield _gauge("maestro_emergency_stop", "1 while state/cadence-bus/STOP is set",
                     int(self.guardrails.emergency is not None))
        governor = doc.get("governor")
        if isinstance(governor, dict):
            yield _gauge("maestro_governor_available", "1 while the governor store answers",
                         int(bool(governor.get("available"))))
            yield _gauge("maestro_governor_outbox", "Settles waiting to be pushed to the governor store",
                         int(governor.get("outbox") or 0))


def _gauge(name: str, text: str, value: float, **labels: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, text, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=value)


def _by_cadence(family: CounterMetricFamily, values: Mapping[str, float]) -> CounterMetricFamily:
    for cadence, value in sorted(values.items()):
        family.add_metric([cadence], value)
    return family


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return float(value)


def _count(value: Any) -> int:
    number = _number(value)
    return int(number) if number is not None and number >= 0 else 0


def _amount(value: Any) -> float:
    number = _number(value)
    return number if number is not None and number >= 0 else 0.0
