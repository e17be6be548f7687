"""diskvault: deduplicating system-image backup.

Layers, top to bottom (import-linter keeps them so):
``cli`` -> ``ops`` -> ``repository`` -> ``catalog`` / ``pack`` / ``tree`` -> ``storage``,
with small leaf modules (``errors``, ``hashing``, ``compression``, ``chunking``) and
``images`` (sources, partition tables), which reads bytes and knows nothing of the repository.
"""

__version__ = "0.1.0"
