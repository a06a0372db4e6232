"""Sandboxes: one OS process per function instance, forked from a warm fork server."""
