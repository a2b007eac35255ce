"""Datasets: downloading with checksums, safe extraction, decoded-array caches, Omniglot."""
from .cache import default_cache_dir, load_arrays, save_arrays
from .download import (ChecksumError, DownloadError, RemoteFile, UnsafeArchiveError, download,
                       verify_file)
from .omniglot import (OMNIGLOT_CHECKSUMS, OmniglotData, OmniglotError, OmniglotImages,
                       download_omniglot, load_omniglot, omniglot_dir, omniglot_remote_files,
                       omniglot_sources, preprocess_drawing, read_split)

__all__ = ["default_cache_dir", "load_arrays", "save_arrays", "ChecksumError", "DownloadError",
           "RemoteFile", "UnsafeArchiveError", "download", "verify_file", "OMNIGLOT_CHECKSUMS",
           "OmniglotData", "OmniglotError", "OmniglotImages", "download_omniglot",
           "load_omniglot", "omniglot_dir", "omniglot_remote_files", "omniglot_sources",
           "preprocess_drawing", "read_split"]
