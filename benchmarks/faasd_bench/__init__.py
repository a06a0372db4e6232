"""The daemon benchmarks' harness: models, servers under test, clients, load, statistics.

Imported by the scripts in `benchmarks/` (run as `python benchmarks/<script>.py`, which puts
`benchmarks/` on the import path). Not part of the faasd package and never imported by it.
"""
