"""Observability: what each task did (log lines, counters, durations), how the worker is doing, and metrics.

``telemetry`` counts; ``logs`` puts the task on every log record and formats stderr
(text or JSON); ``report`` turns counts and the runner's gauges into figures and the
periodic stats line; ``prometheus`` serves them to a scraper. See docs/observability.md.
"""
