"""The storage root on a local disk and on a real S3 server (moto on 127.0.0.1, through pyarrow's client).

Run: pytest tests/platform/test_storage.py
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from mdm.platform import storage


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "root")
    request.getfixturevalue("s3_endpoint")
    return f"s3://mdm/{request.node.name.replace('[', '-').rstrip(']')}"


def test_write_read_exists(root):
    path = storage.join(root, "a", "b.txt")
    assert not storage.exists(path)
    storage.write_text(path, "héllo\n")
    assert storage.exists(path) and storage.read_text(path) == "héllo\n"
    assert storage.is_dir(storage.join(root, "a"))
    lines = storage.join(root, "lines.jsonl")
    storage.write_bytes(lines, b'{"a": 1}\n\n{"a": 2}')
    assert list(storage.iter_lines(lines)) == [b'{"a": 1}', b"", b'{"a": 2}']


def test_upload_download_and_cached_copy(root, tmp_path):
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "w.bin").write_bytes(os.urandom(3 << 20))  # bigger than one multipart part of some clients
    dest = storage.upload(str(src), storage.join(root, "model"))
    back = storage.download(dest, str(tmp_path / "back"))
    assert (Path(back) / "sub" / "w.bin").read_bytes() == (src / "sub" / "w.bin").read_bytes()

    cache = tmp_path / "cache"
    copies: list[str] = []
    threads = [threading.Thread(target=lambda: copies.append(storage.local_copy(dest, str(cache)))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if storage.is_uri(root):
        assert len(set(copies)) == 1 and copies[0].startswith(str(cache))
        assert (Path(copies[0]) / "config.json").read_text() == "{}"
        # a half-written copy (no completion marker) is downloaded again, not used
        marker = next(cache.glob("*.mdm_complete"))
        marker.unlink()
        (Path(copies[0]) / "config.json").write_text("half")
        assert (Path(storage.local_copy(dest, str(cache))) / "config.json").read_text() == "{}"
    else:
        assert copies == [dest] * 4  # a local path is used where it is


def test_missing_and_local_semantics(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        storage.download(str(tmp_path / "absent"), str(tmp_path / "x"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage.upload(str(tmp_path / "absent"), str(tmp_path / "y"))
    assert not storage.is_uri("outputs/run") and not storage.is_uri("file:///tmp/x") and storage.is_uri("gs://b/x")
    assert storage.join("relative", "x") == os.path.abspath("relative/x")


def test_failed_write_is_one_line_naming_the_address_and_the_space(tmp_path):
    """A full local disk says how much the write needed and how much is free; an object store's failure keeps
    the client's first line (it names the bucket and key). A worker's StorageError inside Ray Train's
    TrainingFailedError is what `mdm train` prints (interrupt.storage_failure); any other failure is not."""
    import errno

    from ray.exceptions import RayTaskError
    from ray.train import WorkerGroupError

    from mdm.platform.train.interrupt import storage_failure

    full = storage.write_failure(OSError(errno.ENOSPC, "No space left on device"), str(tmp_path / "ray" / "run"),
                                 3 * 2**20)
    assert full.startswith(f"no space left on the device holding {tmp_path}/ray/run: it needs about 3.0 MiB, ")
    assert full.endswith(" MiB is free") and "\n" not in full
    s3 = storage.write_failure(OSError("When uploading part for key 'r/x' in bucket 'mdm': AWS Error SLOW_DOWN\n"
                                       "detail"), "s3://mdm/r", 10)
    assert s3 == "could not write s3://mdm/r: When uploading part for key 'r/x' in bucket 'mdm': AWS Error SLOW_DOWN"

    cause = storage.StorageError("checkpoint of step 8 not saved: could not write s3://mdm/r: ...")
    wrapped = RayTaskError("train_fn", "Traceback ...", cause).as_instanceof_cause()
    assert storage_failure(WorkerGroupError("rank 1 failed", {1: wrapped})) == str(cause)
    assert storage_failure(WorkerGroupError("rank 0 failed", {0: ValueError("bad")})) is None


def test_reads_retry_the_500s_the_s3_client_does_not(s3_endpoint, monkeypatch, tmp_path):
    """pyarrow's S3 client (AWS SDK) does not retry a `500 InternalError` to a ranged GET: the error body
    takes the data's place and it raises INTERNAL_FAILURE "Failed to flush response stream" (it failed a
    rerun's lease read in CI). Through the fault proxy answering 30% of requests with 500, every read path
    gets the right bytes: whole files, lines in 1 MiB ranges, a download, the run lease."""
    from multinode.fault_proxy import FaultProxy

    from mdm.platform.train.lease import RunLease

    lines = [b"%07d" % i for i in range(300_000)]  # 2.4 MB: three ranges
    storage.write_bytes("s3://mdm/faults/lines.txt", b"\n".join(lines))
    storage.write_text("s3://mdm/faults/small.json", '{"a": 1}')
    with FaultProxy(s3_endpoint, fault_rate=0.3, seed=1, kinds=("500",)) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        assert all(storage.read_text("s3://mdm/faults/small.json") == '{"a": 1}' for _ in range(20))
        assert list(storage.iter_lines("s3://mdm/faults/lines.txt")) == lines
        got = storage.download("s3://mdm/faults/lines.txt", str(tmp_path / "lines.txt"))
        assert Path(got).read_bytes() == b"\n".join(lines)
        lease = RunLease.acquire("s3://mdm/faults", "run")
        lease.release()
        assert RunLease.acquire("s3://mdm/faults", "run").release() is None  # released: taken again at once
    assert proxy.counts["500"] >= 10, proxy.counts
