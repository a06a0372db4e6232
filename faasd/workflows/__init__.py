"""Workflows: DAGs of functions with an end-to-end latency objective."""
