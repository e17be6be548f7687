"""The repository: the facade (write order, deduplication, verified reads) and what it is
made of, lowest layer last: the catalog and locks; packs, trees and the chunker; hashing and
compression. Below it, ``diskvault.storage`` holds the files; above it, ``diskvault.ops``
uses only what this package exports and its modules' public names."""

from .repository import (
    CATALOG, CONFIG, FORMAT_VERSION, BlobWriter, Repository, check_config, pack_target_size, repository_errors,
    require_writable, storage_at,
)

__all__ = ["Repository", "BlobWriter", "check_config", "pack_target_size", "repository_errors", "require_writable",
           "storage_at", "CATALOG", "CONFIG",
           "FORMAT_VERSION"]
