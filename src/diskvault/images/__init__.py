"""Image formats and sources: reading bytes of disks and images.

Nothing here knows of the repository: sources (files, block devices, stdin, with their
sparse extents), partition tables and filesystem maps only read bytes.
"""
