"""Function profiles: latency per configuration, measured, fitted and refined online.

`store` (SQLite, survives restarts; the online rule it applies is `esg.refine`, which the
simulator applies too) · `plan` (what a profile measures) · `fitting` (what it fills in) ·
`sample` (what it runs) · `profiler` (runs it in sandboxes) · `service` (the daemon's owner of
all of it) · `table` (the API's view).
"""
