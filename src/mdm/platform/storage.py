"""The storage root: files one node writes and another reads, on a local disk, a shared mount or an object store.

    from mdm.platform import storage
    storage.is_uri("s3://bucket/mdm")                  # True; "outputs/run" and "/mnt/nfs/x" are local paths
    root = storage.join("s3://bucket/mdm", "data", "gsm8k")
    storage.write_text(storage.join(root, "summary.json"), "{}")     # atomic on a local disk; one PUT on S3
    storage.upload("outputs/run/final", storage.join(root, "final"))  # a file or a whole directory
    local = storage.local_copy("s3://bucket/mdm/run/final")           # per-node cache; local paths as they are

Everything goes through pyarrow's filesystems, the ones Ray Train and Ray Data use (`pyarrow.fs.FileSystem
.from_uri`): `s3://` (credentials from the environment or the instance role; `AWS_ENDPOINT_URL` for an
S3-compatible server), `gs://`, `hdfs://`, and local paths. A local path is made absolute; on one node it is
the storage root as it always was, on a cluster it must be a mount every node shares.

`local_copy` downloads a URI once per node into `$MDM_CACHE` (default `~/.cache/mdm`), keyed by the URI,
under a file lock so that concurrent actors on one node download it once; a finished copy carries a marker
file, so an interrupted download is redone rather than used half-written. Nothing read from storage is ever
unpickled here; callers load safetensors and JSON.

Reads are retried (`retried`, a few tries) on the faults the S3 client itself does not retry: the AWS SDK
files an object store's `500 InternalError` to a ranged GET under INTERNAL_FAILURE ("Failed to flush
response stream": the error body took the place of the data), which pyarrow raises at once.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar

_DONE = ".mdm_complete"
T = TypeVar("T")
# What pyarrow's S3 client raises for a transient fault its AWS SDK does not retry (Ray Data retries it too:
# DataContext.retried_io_errors). Throttling and dropped connections the SDK retries itself.
TRANSIENT_READ_ERRORS = ("AWS Error INTERNAL_FAILURE",)
READ_TRIES = 5


class StorageError(OSError):
    """A write to the storage root failed for good (the S3 client retries transient faults first): its message
    is one line naming the address and what the caller can do."""


def tree_size(path: str) -> int:
    """Bytes in a local file or directory tree."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def write_failure(err: BaseException, dest: str, needed: int) -> str:
    """One line on a failed write of `needed` bytes to `dest`: on a full local disk, the space free there;
    else the storage client's own first line (pyarrow's names the bucket and key, after its retries)."""
    text = str(err).strip()
    full = getattr(err, "errno", None) == errno.ENOSPC or "No space left on device" in text
    if full and not is_uri(dest):
        probe = _local(dest)
        while not os.path.exists(probe) and os.path.dirname(probe) != probe:
            probe = os.path.dirname(probe)
        return (f"no space left on the device holding {dest}: it needs about {_mb(needed)}, "
                f"{_mb(shutil.disk_usage(probe).free)} is free")
    return f"could not write {dest}: {text.splitlines()[0] if text else type(err).__name__}"


def is_uri(path: str) -> bool:
    """True for `s3://...`, `gs://...` and other filesystem URIs; False for local paths (and `file://`)."""
    return "://" in str(path) and not str(path).startswith("file://")


def _local(path: str) -> str:
    path = str(path)
    return os.path.abspath(path[len("file://"):] if path.startswith("file://") else os.path.expanduser(path))


def resolve(path: str):
    """(pyarrow filesystem, path within it) for a URI or a local path."""
    import pyarrow.fs as pafs

    if is_uri(path):
        return pafs.FileSystem.from_uri(str(path))
    return pafs.LocalFileSystem(), _local(path)


def join(base: str, *parts: str) -> str:
    """`base/part/...` for URIs and local paths alike (a local base is made absolute)."""
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *[p.strip("/") for p in parts]])
    return os.path.join(_local(base), *parts)


def exists(path: str) -> bool:
    """True when a file or directory is at `path`."""
    import pyarrow.fs as pafs

    fs, p = resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def is_dir(path: str) -> bool:
    import pyarrow.fs as pafs

    fs, p = resolve(path)
    return fs.get_file_info(p).type == pafs.FileType.Directory


def retried(read: Callable[[], T], tries: int = READ_TRIES) -> T:
    """`read()`, again after a short pause while it raises one of TRANSIENT_READ_ERRORS (`tries` in all);
    any other error, or the last try's, is raised as it came. `read` must be safe to repeat (a read, or a
    download that overwrites)."""
    for attempt in range(tries):
        try:
            return read()
        except OSError as e:
            if attempt == tries - 1 or not any(m in str(e) for m in TRANSIENT_READ_ERRORS):
                raise
            time.sleep(0.2 * 2 ** attempt)
    raise AssertionError("unreachable")


def read_file(fs, path: str) -> bytes:
    """The whole file `path` on the pyarrow filesystem `fs`, retried on transient faults."""
    def read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()
    return retried(read)


def read_bytes(path: str) -> bytes:
    return read_file(*resolve(path))


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path`: locally to a temporary file then renamed (readers never see half a file); on
    an object store as one upload (an object appears whole or not at all)."""
    if not is_uri(path):
        target = Path(_local(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    fs, p = resolve(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def upload(local_path: str, dest: str) -> str:
    """Copy a local file or directory to `dest` (a URI or a local path); returns `dest`."""
    import pyarrow.fs as pafs

    src = _local(local_path)
    if not os.path.exists(src):
        raise FileNotFoundError(f"cannot upload {src}: it does not exist")
    fs, p = resolve(dest)
    if os.path.isdir(src):
        fs.create_dir(p, recursive=True)
        pafs.copy_files(src, p, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    else:
        fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(src, p, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    return dest


def download(src: str, local_path: str) -> str:
    """Copy a file or directory at `src` to the local `local_path`; returns it."""
    import pyarrow.fs as pafs

    fs, p = resolve(src)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{src}: no such file or directory in storage")
    dst = _local(local_path)
    if info.type == pafs.FileType.Directory:
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
    retried(lambda: pafs.copy_files(p, dst, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()))
    return dst


def cache_dir() -> str:
    """This node's download cache: `$MDM_CACHE`, else `~/.cache/mdm`."""
    return os.environ.get("MDM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mdm")


def local_copy(path: str, cache: Optional[str] = None,
               fetch: Optional[Callable[[str, str], None]] = None) -> str:
    """A local path holding what `path` holds: the path itself when local, else a per-node cached download.

    `fetch(path, target)` downloads what is not a storage URI (e.g. an MLflow `runs:/` artifact) into the
    local `target`, under the same lock and completion marker; the default is `download`."""
    if not is_uri(path) and fetch is None:
        return _local(path)
    root = Path(cache or cache_dir())
    root.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(str(path).rstrip("/").encode()).hexdigest()[:16]
    name = str(path).rstrip("/").rsplit("/", 1)[-1] or "root"
    target = root / f"{key}-{name}"
    marker = root / f"{key}{_DONE}"
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download per node; the others wait and reuse it
        if marker.exists() and target.exists():
            return str(target)
        if target.exists():  # an interrupted earlier download
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        (fetch or download)(path, str(target))
        marker.write_text(str(path))
    return str(target)


def iter_lines(path: str) -> Iterator[bytes]:
    """The lines of a (possibly remote) text file as bytes, without their newline, streamed in 1 MiB ranges
    (each retried on transient faults)."""
    fs, p = resolve(path)
    with fs.open_input_file(p) as f:
        rest, offset, size = b"", 0, f.size()
        while offset < size:
            chunk = retried(lambda: f.read_at(min(1 << 20, size - offset), offset))
            if not chunk:
                break
            offset += len(chunk)
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            yield from lines
        if rest:
            yield rest
