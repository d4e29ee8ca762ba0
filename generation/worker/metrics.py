"""The worker's Prometheus metrics, ``splatgen_worker_*``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from diagnostics.ply_io import MAX_SPZ_VERTICES


class WorkerMetrics:
    """Prometheus metrics on a registry of the app's own, so several apps can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.generations = Counter(
            "splatgen_worker_generations",
            "Generations by prompt kind and outcome",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "splatgen_worker_generation_seconds",
            "Backend time per generation",
            registry=self.registry,
            buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
        )
        self.gaussians = Histogram(
            "splatgen_worker_gaussians",
            "Gaussians per generated splat",
            registry=self.registry,
            buckets=(7_000, 50_000, 100_000, 200_000, 400_000, 800_000, 1_600_000, MAX_SPZ_VERTICES),
        )
        self.rss = Gauge("splatgen_worker_rss_bytes", "Worker resident set size", registry=self.registry)
        self.busy = Gauge("splatgen_worker_busy", "1 while a generation runs", registry=self.registry)
        self.cleanups = Counter("splatgen_worker_cleanups", "Cleanups run", registry=self.registry)
