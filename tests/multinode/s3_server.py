"""An S3-compatible server for the multi-node test cluster: moto's ThreadedMotoServer, run as a script.

    python s3_server.py --port 9000 --bucket mdm --bucket other     # inside the cluster's network namespace

It serves real S3 HTTP on 127.0.0.1:PORT (in-memory; the data dies with the process), creates the buckets
(S3 has no implicit buckets), prints `ready` and serves until killed. Clients reach it with
`AWS_ENDPOINT_URL=http://127.0.0.1:PORT` and the fake credentials `AWS_ACCESS_KEY_ID=testing`,
`AWS_SECRET_ACCESS_KEY=testing`, region `us-east-1` (boto3, pyarrow's S3FileSystem, s3fs, MLflow).

One correction sits between moto and the wire: moto 5.2.1 answers CompleteMultipartUpload with the root
element `CompleteMultipartUploadResponse` instead of S3's `CompleteMultipartUploadResult`
(getmoto/moto#10055, fixed upstream after 5.2.1). boto3 does not mind, but pyarrow's S3 client (the one Ray
Train and Ray Data use) takes that answer for an error embedded in a 200 and fails every upload, even a
one-byte file. The middleware renames the element; with a fixed moto it changes nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading

from moto.moto_server.threaded_moto_server import DomainDispatcherApplication, create_backend_app, make_server
from moto.server import ThreadedMotoServer

_WRONG, _RIGHT = b"CompleteMultipartUploadResponse", b"CompleteMultipartUploadResult"


class _FixCompleteMultipartUpload:
    """WSGI middleware: S3's root element in the answer to CompleteMultipartUpload (see the docstring)."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        if environ["REQUEST_METHOD"] != "POST" or "uploadId=" not in environ.get("QUERY_STRING", ""):
            return self.app(environ, start_response)
        captured = {}

        def capture(status, headers, exc_info=None):
            captured.update(status=status, headers=headers, exc_info=exc_info)
            return lambda data: None  # moto returns its body; nothing is written through this

        body = b"".join(self.app(environ, capture)).replace(_WRONG, _RIGHT)
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        start_response(captured["status"], [*headers, ("Content-Length", str(len(body)))], captured["exc_info"])
        return [body]


class S3Server(ThreadedMotoServer):
    def _server_entry(self) -> None:  # ThreadedMotoServer's, with the middleware around moto's app
        app = _FixCompleteMultipartUpload(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(self._ip_address, self._port, app, True)
        self._server_ready_event.set()
        self._server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bucket", action="append", default=[])
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not one log line per request
    # 127.0.0.1 explicitly: ThreadedMotoServer's default is 0.0.0.0.
    server = S3Server(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{args.port}", region_name="us-east-1",
                      aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                      aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"))
    for bucket in args.bucket:
        s3.create_bucket(Bucket=bucket)
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
