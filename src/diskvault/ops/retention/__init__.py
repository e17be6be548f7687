"""Retention: forget snapshots by policy, prune the data no snapshot needs."""
