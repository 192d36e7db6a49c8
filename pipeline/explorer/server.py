"""The explorer's HTTP server: the page (``static/``) and a read-only JSON API over ``Explorer``.

The standard library's threading server is enough for one user's browser on the same machine,
and adds no dependency. Every user-fixable problem is an HTTP 4xx with ``{"error": "one line"}``
that the page shows; an unexpected one is a 500 with the same shape, logged with its traceback.
"""
from __future__ import annotations

import json
import logging
import mimetypes
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pipeline.explorer.queries import QueryError
from pipeline.explorer.session import Explorer

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
API = {"/api/datasets": "list_datasets", "/api/records": "records", "/api/record": "record",
       "/api/lineage": "lineage", "/api/compare": "compare", "/api/errors": "error_patterns"}


class Handler(BaseHTTPRequestHandler):
    explorer: Explorer  # set on the subclass made by make_server
    server_version = "mathsynth-explore"

    def do_GET(self) -> None:  # noqa: N802 (the http.server name)
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        try:
            if url.path in ("/", "/index.html"):
                self._file(STATIC / "index.html")
            elif url.path.startswith("/static/"):
                self._static(url.path[len("/static/"):])
            elif url.path == "/api/export":
                self._export(params)
            elif url.path in API:
                self._json(200, getattr(self.explorer, API[url.path])(params))
            else:
                self._json(404, {"error": f"no page {url.path}"})
        except QueryError as err:
            self._json(400, {"error": str(err)})
        except LookupError as err:
            self._json(404, {"error": str(err.args[0]) if err.args else "not found"})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away
        except Exception as err:  # the page shows it; the server keeps serving
            log.exception("%s failed", self.path)
            self._json(500, {"error": f"{type(err).__name__}: {err}"})

    def _static(self, relative: str) -> None:
        path = (STATIC / relative).resolve()
        if STATIC.resolve() not in path.parents or not path.is_file():
            self._json(404, {"error": f"no file {relative}"})
            return
        self._file(path)

    def _file(self, path: Path) -> None:
        body = path.read_bytes()
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if path.suffix == ".woff2":
            kind = "font/woff2"
        self.send_response(200)
        self.send_header("Content-Type", kind + ("; charset=utf-8" if kind.startswith("text/") or kind.endswith("javascript") else ""))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _export(self, params: dict[str, str]) -> None:
        filename, lines = self.explorer.export(params)
        first = next(lines, None)  # a bad query fails here, before the headers are sent
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson; charset=utf-8")
        self.send_header("Content-Disposition", f'attachment; filename="{filename}"')
        self.end_headers()
        if first is not None:
            self.wfile.write(first.encode("utf-8"))
        for line in lines:
            self.wfile.write(line.encode("utf-8"))

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s " + format, self.address_string(), *args)


def make_server(explorer: Explorer, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    handler = type("ExplorerHandler", (Handler,), {"explorer": explorer})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def start_server(paths: list[str], host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Index ``paths`` and serve them from a background thread: (server, its URL). Stop it with
    ``server.shutdown()``."""
    explorer = Explorer(paths)
    server = make_server(explorer, host, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, url_of(server)


def url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/"
