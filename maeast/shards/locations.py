"""What a shard location names, and the fsspec filesystem that serves it (maeast.shards.storage reads through it).

A *location* is a folder or an object:
- a plain path, or file:///abs/path: local disk (read with plain open(), the fast path);
- s3://bucket/prefix (the `s3` extra, s3fs): credentials from the standard places (AWS_ACCESS_KEY_ID /
  AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws, instance roles); an S3-compatible
  store (MinIO, Ceph, R2) through MAEAST_S3_ENDPOINT_URL or AWS_ENDPOINT_URL (e.g. http://minio:9000);
- gs://bucket/prefix (the `gcs` extra, gcsfs): GOOGLE_APPLICATION_CREDENTIALS or the gcloud login;
- http(s)://host/prefix: read only, ranged GETs;
- pipe:COMMAND, as in webdataset: the command's stdout is the object; in a folder location `{}` in the
  command stands for the object's name (`pipe:aws s3 cp s3://bucket/shards/{} -`). Read only, no seeking.

Here: telling local from remote (is_url, local_path), naming an object in a folder (join), a location fit
for a log line (redact), and the fsspec filesystem of a URL with its options from the environment
(filesystem: endpoint, timeouts, one S3 session a process, cached filesystems kept alive across a fork).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from maeast.errors import MaeastError

Location = str | Path

ENDPOINT_ENV = ("MAEAST_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
"""Where an S3-compatible store is reached, the first set of these (none: AWS itself)."""
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


def is_url(location: Location) -> bool:
    """Whether a location is anything but local disk (a plain path or file://)."""
    text = str(location)
    return text.startswith("pipe:") or ("://" in text and not text.startswith("file://"))


def local_path(location: Location) -> Path:
    """The local path of a plain path or file:// URL."""
    text = str(location)
    return Path(text[len("file://"):]) if text.startswith("file://") else Path(location)


def join(folder: Location, name: str) -> Location:
    """The location of object `name` inside a folder location (a Path for local folders)."""
    text = str(folder)
    if text.startswith("pipe:"):
        if "{}" not in text:
            raise MaeastError(f"{text}: a pipe: folder needs {{}} where the object's name goes "
                              f"(e.g. pipe:aws s3 cp s3://bucket/shards/{{}} -)")
        return text.replace("{}", name)
    if not is_url(text):
        return local_path(text) / name
    return text.rstrip("/") + "/" + name


def redact(location: Location) -> str:
    """A location fit for a log line: no user:password@ and no query string (presigned URLs carry keys)."""
    text = re.sub(r"(://)[^/@\s]*@", r"\1", str(location))
    return re.sub(r"\?\S*", "?...", text)


def filesystem(location: Location):
    """(fsspec filesystem, path within it) for any location but pipe:; S3 options from the environment."""
    import fsspec

    text = str(location)
    if text.startswith("pipe:"):
        raise MaeastError(f"{redact(text)}: pipe: locations are read as streams only; use s3://, gs:// or a folder")
    protocol = text.split("://", 1)[0] if "://" in text else "file"
    options: dict = {}
    if protocol in ("s3", "s3a"):
        endpoint = next((os.environ[k] for k in ENDPOINT_ENV if os.environ.get(k)), None)
        options["config_kwargs"] = {"connect_timeout": 10, "read_timeout": 60, "retries": {"max_attempts": 2}}
        if endpoint:
            options["endpoint_url"] = endpoint
        options["session"] = _s3_session()
    elif protocol in ("http", "https"):
        import aiohttp
        options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)}
    try:
        return fsspec.core.url_to_fs(text, **options)
    except ImportError:
        extra = EXTRAS.get(protocol, protocol)
        raise MaeastError(f"{redact(text)}: {protocol}:// needs the {extra} extra "
                          f"(pip install 'maeast[{extra}]')") from None
    except ValueError as e:  # an unknown protocol
        raise MaeastError(f"{redact(text)}: {e}; use a folder, file://, s3://, gs://, http(s):// or pipe:") from None


_S3_SESSIONS: dict[int, object] = {}
"""Per process id, its aiobotocore session (_s3_session)."""


def _s3_session():
    """This process's aiobotocore session, every process's sharing one botocore loader (the parsed
    service models): a forked loader worker then makes its S3 client without parsing botocore's JSON
    again (0.3-0.5 s a worker every epoch on a 2-core machine). A session per process, as credentials
    and their refresh locks belong to one event loop. None without the s3 extra (url_to_fs says so)."""
    try:
        import aiobotocore.session
        import botocore.loaders
    except ImportError:
        return None
    if os.getpid() not in _S3_SESSIONS:
        loader = next(iter(_S3_SESSIONS.values())).get_component("data_loader") if _S3_SESSIONS else \
            botocore.loaders.create_loader()
        session = aiobotocore.session.AioSession()
        session.register_component("data_loader", loader)
        _S3_SESSIONS[os.getpid()] = session
    return _S3_SESSIONS[os.getpid()]


_INHERITED: list = []
"""In a forked process, the filesystems its parent had cached (_hold_filesystems)."""


def _hold_filesystems() -> None:
    """Before a fork (a loader worker), hold the cached fsspec filesystems, so that the child keeps them
    alive. fsspec drops them from its cache in the child, and their close-session finalizers would
    then wait for the parent's event loop, which does not run there: 1 s each (fsspec's sync checks
    once a second), at the first garbage collection in every worker of every epoch."""
    import sys

    spec = sys.modules.get("fsspec.spec")
    classes = [spec.AbstractFileSystem] if spec else []
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        _INHERITED.extend(cls.__dict__.get("_cache", {}).values())


os.register_at_fork(before=_hold_filesystems, after_in_parent=_INHERITED.clear)
