"""Create a repository with fixed chunker parameters."""

from __future__ import annotations

from ..repository.chunking import DEFAULT_AVG, ChunkerParams
from ..repository import Repository


def init_repository(path: str, chunk_size: int = DEFAULT_AVG) -> Repository:
    """Raises ValueError for a bad chunk size, RepositoryExists / RepositoryNotFound."""
    return Repository.init(path, ChunkerParams.for_average(chunk_size))
