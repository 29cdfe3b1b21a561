"""Files probekit writes and reads back: atomic writes, integrity checksums and schema checks, in one place.

Writers go through :func:`atomic_write` (one file) or :func:`atomic_dir` (a checkpoint
directory): the data goes to a temporary name in the same directory, is fsynced and renamed, so
a reader sees the old file or the whole new one; a failed write (a full disk) leaves nothing and
raises a :class:`~probekit.errors.StoreError` naming the path, the bytes needed and the bytes free.

Readers parse with :func:`loads_json` (duplicate keys and NaN refused), :func:`read_safetensors`
(never unpickles; any damage is a probekit error, never a raw one), check fields with
:func:`field`, tensors with :func:`check_tensor` / :func:`check_orthonormal`, and compare the
:func:`checksum` the writer stored (xxh3-128 of the canonical JSON and of every tensor's name,
dtype, shape and bytes): a file whose content changed after it was written is refused, so a
reader gets the data that was saved or an error, never different numbers. A checkpoint
directory carries a :data:`MANIFEST` of its files' sizes and hashes (:func:`write_manifest`,
:func:`check_manifest`).

Example:
    >>> import tempfile, os
    >>> p = atomic_write(os.path.join(tempfile.mkdtemp(), "a.json"), '{"x": 1}', "note")
    >>> loads_json(p.read_bytes(), f"note {p.name}")
    {'x': 1}
"""

from .manifest import MANIFEST, check_cache, check_manifest, write_manifest
from .reading import (canonical, check_checksum, check_orthonormal, check_tensor, checksum, field, finite, loads_json,
                      read_safetensors)
from .writing import atomic_dir, atomic_write, replace_section, free_bytes, model_bytes, size_text, write_failure

__all__ = ["atomic_write", "replace_section", "atomic_dir", "write_failure", "loads_json", "read_safetensors", "field", "check_tensor",
           "check_orthonormal", "canonical", "checksum", "check_checksum", "MANIFEST", "write_manifest",
           "check_manifest", "check_cache", "model_bytes", "size_text", "free_bytes", "finite"]
