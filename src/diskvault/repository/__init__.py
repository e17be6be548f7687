"""The repository: the facade (write order, deduplication, verified reads) and what it is
made of, lowest layer last: the catalog and locks; packs, trees and the chunker; hashing and
compression. Below it, ``diskvault.storage`` holds the files; above it, ``diskvault.ops``
uses only what this package exports and its modules' public names."""

from .repository import (CATALOG, CONFIG, FORMAT_VERSION, BlobWriter, Repository, pack_target_size, repository_errors,
                         require_writable)

__all__ = ["Repository", "BlobWriter", "pack_target_size", "repository_errors", "require_writable", "CATALOG", "CONFIG",
           "FORMAT_VERSION"]
