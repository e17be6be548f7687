"""The repository, highest layer first: maintenance (check, repair and prune's building
blocks); the facade (write order, deduplication, verified reads); where a repository lives
(location: its storage, making one, unlocking it); what it cannot change
(writable) and how it writes packs (writer); the catalog and locks; packs, trees and the
chunker; hashing and compression. Below it, ``diskvault.storage`` holds the files; above it,
``diskvault.ops`` uses only what this package exports and its modules' public names."""

from .catalog import CATALOG
from .config import CONFIG, ENCRYPTIONS, FORMAT_VERSION, READ_VERSIONS, check_config, encryption_of, load_config
from .location import CATALOG_FILES, remote_storage, storage_at, unlock
from .repository import Repository
from .writable import repository_errors, require_writable
from .writer import BlobWriter, pack_target_size

__all__ = ["Repository", "BlobWriter", "check_config", "pack_target_size", "repository_errors", "require_writable",
           "remote_storage", "storage_at", "unlock", "encryption_of", "load_config", "CATALOG", "CATALOG_FILES", "CONFIG", "ENCRYPTIONS", "FORMAT_VERSION", "READ_VERSIONS"]
