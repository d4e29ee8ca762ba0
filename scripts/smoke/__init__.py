"""The phase-1 smoke test's parts; ``scripts/smoke_phase1.py`` puts them together."""


class SmokeError(Exception):
    """The smoke test could not run (as opposed to: it ran and failed)."""
