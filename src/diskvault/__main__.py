"""``python -m diskvault`` runs the command line."""

from .entry import main

main()
