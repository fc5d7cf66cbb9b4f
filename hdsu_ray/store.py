"""Files that appear whole or not at all, and cache keys that hash content.

Every file hdsu-ray writes goes to a temporary name in the same directory first and is renamed
into place (a rename within one file system is atomic), so a reader or a crashed run never sees
half a file. Every cache key is a SHA-256 over canonical JSON of what decides the artefact: the
rows' content, never a path that may hold other rows tomorrow.

Standard library and numpy only: the config layer's neighbours and the Ray workers import it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

KEY_LENGTH = 16  # hex digits of a cache directory or file name; the full digest goes in records


def _canonical(value: Any) -> Any:
    """JSON-ready form with a stable order: dataclasses and sets are common in keys."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_canonical(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


def digest(*parts: Any) -> str:
    """Full SHA-256 hex digest of ``parts`` as canonical JSON."""
    text = json.dumps(_canonical(list(parts)), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_key(kind: str, *parts: Any) -> str:
    """A cache key: ``kind`` (what the artefact is) plus everything that changes it."""
    return digest(kind, *parts)[:KEY_LENGTH]


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hierarchy inputs, data files)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def arrays_digest(groups: Iterable[dict[str, Any]], *extra: str) -> str:
    """SHA-256 over named numpy arrays (names, dtypes, shapes and bytes), plus ``extra`` strings."""
    import numpy as np

    h = hashlib.sha256()
    for group in groups:
        for name in sorted(group):
            a = np.ascontiguousarray(group[name])
            h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
            h.update(a.tobytes())
    for text in extra:
        h.update(text.encode())
    return h.hexdigest()


def safe_name(text: str) -> str:
    """``text`` as one file name: anything but letters, digits, ``.``, ``_`` and ``-`` becomes ``_``,
    so a method label such as ``../x`` or ``a:b`` can never leave its directory."""
    import re

    name = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".")
    return name or "_"


def _temp_beside(path: Path) -> tuple[int, Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    return fd, Path(tmp)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` beside ``path`` under a temporary name, then rename it into place."""
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Strict JSON with a trailing newline: numpy values become Python numbers, and a non-finite
    float (a diverged loss in a curve) becomes null, which every JSON reader accepts."""
    text = json.dumps(_finite(payload), indent=2, default=_json_default, allow_nan=False)
    return write_text_atomic(path, text + "\n")


def _finite(value: Any) -> Any:
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _finite(value.tolist())
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def save_npz_atomic(path: str | Path, arrays: dict[str, Any]) -> Path:
    """``numpy.savez`` under a temporary name, then renamed into place."""
    import numpy as np

    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_npz(path: str | Path) -> dict[str, Any]:
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def swap_dir(tmp: str | Path, final: str | Path) -> Path:
    """Move the finished directory ``tmp`` to ``final``, replacing any old one.

    The old directory is first renamed aside, so a reader sees the old or the new tree, and a
    crash between the two renames leaves the old one recoverable beside it, never half of either.
    """
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def temp_dir_beside(final: str | Path) -> Path:
    """An empty directory next to ``final`` (same file system, so :func:`swap_dir` can rename)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))


def copytree_atomic(src: str | Path, dst: str | Path) -> Path:
    """Copy a directory into place in one rename, so readers never see half of it."""
    tmp = temp_dir_beside(dst)
    shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    return swap_dir(tmp, dst)


def staging_dir(final: str | Path) -> Path:
    """Where a run writes until it succeeds: ``<final>.partial`` beside ``final``.

    A rerun after a failure finds its Ray Train and Tune state there and resumes; a rerun after a
    success starts from hard links of the finished tree (its state is resumable, its files are
    not rewritten: every write here goes to a new file that is renamed into place). The previous
    run's directory is untouched until :func:`promote` swaps the new one in.
    """
    final = Path(final)
    work = final.with_name(final.name + ".partial")
    if not work.exists() and final.is_dir():
        shutil.copytree(final, work, copy_function=os.link, symlinks=True)
    work.mkdir(parents=True, exist_ok=True)
    return work


def promote(work: str | Path, final: str | Path) -> Path:
    """Swap a finished run's staging directory in as ``final`` (the old one is removed after)."""
    return swap_dir(work, final)
