"""Use cases, one module each: init, snapshot, restore, listing and info (and later prune,
check, serve, mount). They take an open Repository and plain arguments, report progress
through a callback, and return plain results for the CLI to render."""
