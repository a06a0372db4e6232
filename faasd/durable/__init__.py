"""Durable asynchronous invocations: accepted calls survive a daemon restart.

`store` is the SQLite record of every async call (WAL, synced before the 202); `runner` runs
them, retries what a stopped daemon left running, delivers callbacks, and purges old results.
"""
