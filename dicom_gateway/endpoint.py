"""The HTTP endpoint for ops: ``/metrics`` (Prometheus text), ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the process's threads are alive (restart it otherwise);
``/readyz`` answers 200 only when the gateway also accepts associations, the spool is
writable and the audit trail takes records (send traffic elsewhere otherwise), as MONAI Deploy
Informatics Gateway does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["OpsEndpoint"]

Check = Callable[[], tuple[bool, str]]


class OpsEndpoint:
    """A small threaded HTTP server on ``host:port`` (port 0 picks a free one)."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, healthy: Check,
                 ready: Check) -> None:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    endpoint._reply(self, 200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, why = (healthy if path == "/healthz" else ready)()
                    endpoint._reply(self, 200 if ok else 503, (why + "\n").encode(), "text/plain")
                else:
                    endpoint._reply(self, 404, b"not found\n", "text/plain")

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes every few seconds would flood the log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="ops-http",
                                        daemon=True)

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str) -> None:
        handler.send_response(code)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
