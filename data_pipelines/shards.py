"""Turn what a user writes for `shards=` into the list of shard URLs a stream reads.

Accepted: a brace pattern (`train-{000000..000099}.tar`), a directory of `*.tar` files, a `*.txt` list file
(one pattern or URL per line, relative paths taken from the list file's folder), any URL webdataset opens
(`pipe:`, `http://`, `file:`), or a list of any of these. Local shards are checked up front so that a typo fails
in the main process with the missing paths named, not later inside a dataloader worker.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from webdataset.shardlists import expand_urls

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
ShardSpec = str | os.PathLike | Sequence[str | os.PathLike]


def expand_shards(spec: ShardSpec) -> list[str]:
    """Expand `spec` into shard URLs, in order; fail fast when it matches nothing or names missing local files."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    urls = [url for one in specs for url in _expand_one(os.fspath(one))]
    if not urls:
        raise ValueError(
            f"no shards matched {spec!r}: give a brace pattern such as 'data/train-{{000000..000009}}.tar', "
            "a directory holding *.tar shards, or a .txt file listing them"
        )
    missing = [url for url in urls if local_path(url) is not None and not local_path(url).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FileNotFoundError(f"{len(missing)} of {len(urls)} shards from {spec!r} do not exist: {shown}")
    return urls


def local_path(url: str) -> Path | None:
    """The file a URL names on this machine, or None for `pipe:`, `http:` and other remote URLs."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(parsed.path)
    return Path(url) if parsed.scheme == "" else None


def _expand_one(spec: str) -> list[str]:
    if os.path.isdir(spec):
        return sorted(str(path) for path in Path(spec).iterdir() if path.name.endswith(SHARD_SUFFIXES))
    if spec.endswith(".txt") and os.path.isfile(spec):
        return _read_list_file(Path(spec))
    return expand_urls(spec)


def _read_list_file(list_file: Path) -> list[str]:
    urls = []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        relative = local_path(line) is not None and not os.path.isabs(line)
        urls.extend(_expand_one(str(list_file.parent / line)) if relative else expand_urls(line))
    return urls
