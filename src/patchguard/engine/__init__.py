"""Snapshot, findings and (later) baselines: the engine knows surfaces only by their interface."""
