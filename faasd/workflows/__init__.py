"""Workflows: DAGs of functions with an end-to-end SLO (spec, wiring, runner, store)."""
