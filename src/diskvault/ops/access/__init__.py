"""Instant access to snapshots without restoring them: the random-access snapshot reader,
the NBD server (``serve``) and the FUSE file system (``mount``)."""
