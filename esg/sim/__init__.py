"""Discrete-event simulator of a serverless GPU cluster, driving the same policies as the daemon.

* `cluster`: nodes, MIG slices, warm sandboxes, the network, cold starts
* `functions`: per-configuration latency (measured CPU side, analytic GPU side)
* `workloads`: the four applications (and three larger ones), L and the SLO settings,
  Azure-like arrivals, loads
* `engine`: the event loop (`Simulation`)
* `metrics`: what a run records and the report's metrics
* `report`, `figures`, `cli`: the 3 × 3 grid for every policy (`python -m esg.sim report`)
* `workflow_file`, `run`: one policy on any workflow file (`python -m esg.sim run`)
"""
