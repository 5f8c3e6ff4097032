"""`patchguard witness serve`: the witness over HTTP, as C2SP tlog-witness's add-checkpoint.

POST /add-checkpoint with the request body (at most MAX_REQUEST bytes, read with a socket
timeout) answers 200 with the witness's cosignature line, 409 with the size it holds when the
request's old size is not it, 404 for a log it does not follow, 422 when the checkpoint does
not extend the one it cosigned (a split view: both notes go to stderr), 400 for anything
malformed. One request at a time changes the state (the witness's file lock).
"""

from __future__ import annotations

import http.server
import sys
import time
from collections.abc import Callable

from patchguard.policy.transparency import TransparencyError
from patchguard.policy.transparency.checkpoint import SplitView
from patchguard.policy.transparency.witness import (
    MAX_REQUEST,
    Conflict,
    UnknownLog,
    Witness,
    cosignature_lines,
)


def _answer(witness: Witness, body: bytes) -> tuple[int, str]:
    try:
        cosigned = witness.add_checkpoint(body, int(time.time()))
    except Conflict as exc:
        return 409, f"{exc.size}\n"
    except UnknownLog as exc:
        return 404, f"{exc}\n"
    except SplitView as exc:
        sys.stderr.write(f"patchguard witness: {exc}\n{exc.first.decode()}\n{exc.second.decode()}")
        return 422, f"{exc}\n"
    except TransparencyError as exc:
        return 400, f"{exc}\n"
    return 200, cosignature_lines(cosigned, witness.signer.verifier)


def handler(witness: Witness) -> Callable[..., http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 10  # seconds per socket operation: a client cannot hold the witness

        def do_POST(self) -> None:
            if self.path != "/add-checkpoint":
                return self._send(404, "not found\n")
            length = self.headers.get("Content-Length", "")
            if not length.isdigit() or int(length) > MAX_REQUEST:
                return self._send(413 if length.isdigit() else 411, "bad length\n")
            body = self.rfile.read(int(length))
            status, text = _answer(witness, body)
            self._send(status, text)

        def _send(self, status: int, text: str) -> None:
            data = text.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write(f"patchguard witness: {self.address_string()} {format % args}\n")

    return Handler


def serve(witness: Witness, host: str, port: int) -> http.server.ThreadingHTTPServer:
    return http.server.ThreadingHTTPServer((host, port), handler(witness))
