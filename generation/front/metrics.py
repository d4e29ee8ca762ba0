"""Prometheus metrics of the front end, on a registry of the app's own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class FrontMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "splatgen_requests",
            "Requests by route, HTTP status and outcome code (ok, or the error code answered)",
            ["route", "status", "code"],
            registry=r,
        )
        self.generation_seconds = Histogram(
            "splatgen_generation_seconds",
            "End-to-end seconds per served splat",
            registry=r,
            buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
        )
        self.queue_seconds = Histogram(
            "splatgen_request_queue_seconds", "Seconds waiting for a free worker", registry=r,
            buckets=(0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 240),
        )  # fmt: skip
        self.queue_depth = Gauge("splatgen_queue_depth", "Requests waiting for a worker", registry=r)
        self.memory_checks = Counter(
            "splatgen_memory_checks", "Memory checks by action", ["action"], registry=r
        )
        self.memory_check_seconds = Histogram(
            "splatgen_memory_check_seconds", "Seconds per memory check (one loopback call + own RSS)", registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 1, 5),
        )  # fmt: skip
        self.opacity_fixes = Counter("splatgen_opacity_fixes", "Splats whose opacity was shifted", registry=r)
        self.gate_failures = Counter(
            "splatgen_gate_failures", "Quality gate failures by code", ["code"], registry=r
        )
        self.retries = Counter("splatgen_retries", "Generations retried, by reason", ["reason"], registry=r)
