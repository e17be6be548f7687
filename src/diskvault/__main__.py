"""``python -m diskvault`` runs the command line."""

from .cli import main

main()
