"""Where a workflow's files are: the data root, data files under it, the DeepSpeed JSON.

The data-root default lives here and nowhere else: the workflow loader, the hierarchy (MeSH tree)
and the benchmarks all ask :func:`resolve_data_root`, so a changed default cannot leave one of
them reading another directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hdsu_ray.errors import WorkflowError

DATA_ROOT_ENV = "HDSU_DATA_ROOT"
DEFAULT_DATA_ROOT = "../shared/data"  # relative to the working directory: beside the checkout


def resolve_data_root(cli_value: str | None = None, file_value: str | None = None) -> Path:
    """The data root, absolute: the command line's ``data_root=``, else ``$HDSU_DATA_ROOT``, else
    the workflow's ``data_root`` key, else :data:`DEFAULT_DATA_ROOT` from the working directory."""
    for value in (cli_value, os.environ.get(DATA_ROOT_ENV), file_value, DEFAULT_DATA_ROOT):
        if value:
            return Path(value).expanduser().resolve()
    raise AssertionError("unreachable: DEFAULT_DATA_ROOT is not empty")


# A workflow name or method label becomes one path component (runs/<name>, models/<label>): no
# separators, no "..", nothing a shell or a markdown table would read as syntax.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
SAFE_NAME_TEXT = ("a name of letters, digits and . _ + - that starts with a letter or digit, at most 100 "
                  "characters: it names a directory")


def check_name(value: str, key: str, file: str | None = None) -> str:
    """``value`` if it is a safe single path component, else a :class:`WorkflowError` naming ``key``."""
    if not SAFE_NAME.fullmatch(value):
        raise WorkflowError(f"got {value!r}", file=file, key=key, expected=SAFE_NAME_TEXT)
    return value


def data_path(workflow, relative: str) -> Path:
    """A data file of ``workflow``: absolute paths as given, others under its data root."""
    path = Path(relative).expanduser()
    return path if path.is_absolute() else Path(workflow.data_root or DEFAULT_DATA_ROOT) / path


def deepspeed_config_path(unlearn) -> Path:
    """``unlearn.deepspeed_config``, else ``cluster/zero<stage>.json`` from the working directory,
    else from the source checkout the package runs from."""
    path = Path(unlearn.deepspeed_config or f"cluster/zero{unlearn.zero_stage}.json")
    if not path.is_absolute() and not path.exists():
        path = Path(__file__).resolve().parents[2] / path
    return path
