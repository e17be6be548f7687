"""Integrity: check a repository, repair it, verify a snapshot against its source, and what damage costs a snapshot."""
