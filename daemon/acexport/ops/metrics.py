"""Prometheus metrics: they observe the lanes' events (``events.LaneObserver``);
gauges that describe the present (queue depths) are read from the lanes at scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import __version__
from ..events import ExportEnded, LaneObserver
from .logging import DroppedLines
from .statusview import WINDOW_STATES, counted_state

if TYPE_CHECKING:
    from .statusview import StatusView


class Metrics(LaneObserver):
    """Every metric acexport exports, on its own registry."""

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series add noise
        self.registry = CollectorRegistry()
        r = self.registry
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # The process's own: RSS, CPU, open descriptors, start time; Python's version, GC.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        r.register(_DroppedLogLines())
        self.exports = Counter(
            "acexport_exports",
            "Exports finished (windows and snapshots; each window of a coalesced AC "
            "request counts), by outcome.",
            ["workspace", "type", "outcome"],
            registry=r,
        )
        self.ac_exports = Counter(
            "acexport_ac_exports",
            "AC exports whose data was committed: one per request, however many windows "
            "it served (acexport_exports counts those).",
            ["workspace", "type"],
            registry=r,
        )
        self.payload_bytes = Counter(
            "acexport_payload_bytes",
            "Bytes of payload downloaded.",
            ["workspace", "type"],
            registry=r,
        )
        self.poll_requests = Counter(
            "acexport_requests",
            "Requests made to AC for exports.",
            ["workspace", "type"],
            registry=r,
        )
        self.responses = Counter(
            "acexport_ac_responses",
            "HTTP status codes AC (or a proxy) answered.",
            ["workspace", "code"],
            registry=r,
        )
        self.new_columns = Counter(
            "acexport_new_columns",
            "Parquet files holding a column AC's table (as acexport knows it) did not have.",
            ["type", "column"],
            registry=r,
        )
        self.restatements_kept = Counter(
            "acexport_restatements_kept",
            "Restatements that served far fewer records than the file they would replace: "
            "the previous revision was kept (restate_min_records).",
            ["workspace", "type"],
            registry=r,
        )
        self.unparsed_values = Counter(
            "acexport_unparsed_values",
            "Values that did not fit their Parquet column, kept as text in _unparsed.",
            ["type"],
            registry=r,
        )
        self.last_success = Gauge(
            "acexport_last_success_timestamp_seconds",
            "When a job last finished an export.",
            ["acexport_job"],
            registry=r,
        )
        # Buckets from seconds to a day: AC takes seconds to hours, downloads seconds to
        # minutes. Labelled by type only: 15 buckets x workspaces x types would be 90,000
        # series at 1,000 workspaces (and creating each child cost CPU per export).
        spans = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
        self.processing = Histogram(
            "acexport_ac_processing_seconds",
            "AC's time from submission to ready data, per export.",
            ["type"],
            buckets=spans,
            registry=r,
        )
        self.download = Histogram(
            "acexport_download_seconds",
            "Time from ready data to the committed file, per export.",
            ["type"],
            buckets=spans,
            registry=r,
        )
        Info("acexport_build", "The running acexport.", registry=r).info({"version": __version__})
        self.windows = Gauge(
            "acexport_windows",
            "Due windows (x types) of each job in the catch-up horizon, by state.",
            ["acexport_job", "state"],
            registry=r,
        )
        self.windows_expired = Counter(
            "acexport_windows_expired_total",
            "Window files deleted by the job's keep (recorded expired: not missing, not failed)",
            ["job"],
            registry=r,
        )
        self.hook_deliveries = Counter(
            "acexport_hook_deliveries_total",
            "Attempts to tell a hook of a committed file, by outcome (delivered, retried, failed)",
            ["hook", "outcome"],
            registry=r,
        )
        self.hook_pending = Gauge(
            "acexport_hook_pending",
            "Committed files a hook has not been told of yet",
            ["hook"],
            registry=r,
        )
        self.hook_oldest_pending = Gauge(
            "acexport_hook_oldest_pending_seconds",
            "Age of the oldest committed file a hook has not been told of (0: none)",
            ["hook"],
            registry=r,
        )
        self.loop_lag_max = Gauge(
            "acexport_event_loop_lag_max_seconds",
            "The longest the event loop was late to wake a timer, since start.",
            registry=r,
        )
        self.oldest_missing = Gauge(
            "acexport_oldest_missing_window_age_seconds",
            "Age of the end of the oldest due window not yet exported (0 when none).",
            ["acexport_job"],
            registry=r,
        )

    def _child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, looked up once: ``labels`` validates and locks on
        every call, and an export made nine of them (bench/instructions.py)."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def export_ended(self, event: ExportEnded) -> None:
        outcome = "done" if event.ok else "failed"
        self._child(self.exports, event.workspace, event.type, outcome).inc()
        if event.ok:
            self._child(self.payload_bytes, event.workspace, event.type).inc(event.payload_bytes)
            if event.windows_served:
                self._child(self.ac_exports, event.workspace, event.type).inc()
            self._child(self.poll_requests, event.workspace, event.type).inc(event.requests)
            self._child(self.last_success, event.job).set_to_current_time()
            if event.processing_s is not None:
                self._child(self.processing, event.type).observe(event.processing_s)
            if event.download_s is not None:
                self._child(self.download, event.type).observe(event.download_s)
            for column in event.new_columns:
                self.new_columns.labels(event.type, column).inc()
            if event.unparsed_values:
                self.unparsed_values.labels(event.type).inc(event.unparsed_values)
            if event.restatement_kept:
                self.restatements_kept.labels(event.workspace, event.type).inc()

    def expect(self, exports: Iterable[tuple[str, str]]) -> None:
        """The (workspace, type) pairs the jobs export: their counters exist from the
        start, at 0, so ``increase(...{outcome="failed"}[1h])`` sees the first failure."""
        for workspace, type_ in exports:
            for outcome in ("done", "failed"):
                self.exports.labels(workspace, type_, outcome)

    def answered(self, workspace: str, code: int) -> None:
        self._child(self.responses, workspace, str(code)).inc()

    def count_windows(self, view: StatusView) -> None:
        """Each job's due windows (x types) by state: gaps show as missing or failed."""
        for job in view.jobs:
            counts = dict.fromkeys(WINDOW_STATES, 0)
            for cells in job.rows.values():
                for cell in cells:
                    counts[counted_state(cell.state)] += 1
            for state, count in counts.items():
                self.windows.labels(job.name, state).set(count)

    def watch_lanes(self, lanes: Callable[[], Iterable[Any]]) -> None:
        self.registry.register(_LaneCollector(lanes))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LaneCollector(Collector):
    def __init__(self, lanes: Callable[[], Iterable[Any]]) -> None:
        self._lanes = lanes

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily(
            "acexport_lane_queue_depth", "Exports waiting in a lane.", labels=["lane"]
        )
        in_flight = GaugeMetricFamily(
            "acexport_lane_in_flight",
            "Exports of a lane being polled or downloaded.",
            labels=["lane"],
        )
        for lane in self._lanes():
            depth.add_metric([lane.key], lane.queued)
            in_flight.add_metric([lane.key], lane.in_flight)
        return [depth, in_flight]


class _DroppedLogLines(Collector):
    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "acexport_log_lines_dropped",
            "Log lines that could not be written (a log nobody reads any more, a full "
            "disk): dropped, the exports going on.",
            value=DroppedLines.count,
        )
