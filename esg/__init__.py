"""ESG and the other schedulers of the field: a pure library (no asyncio, sockets or clocks).

`esg.model` holds the vocabulary, `esg.policy` the seam both drivers use, `esg.policies` the
policies by name, and `esg.sim` the discrete-event simulator.
"""
