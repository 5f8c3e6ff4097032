"""`patchguard witness serve`: the witness over HTTP, as C2SP tlog-witness's add-checkpoint.

POST /add-checkpoint, the body at most MAX_REQUEST bytes and read with a socket timeout, is
answered as tlog-witness says: 200 with the witness's cosignature line; 409 with the size it
holds (text/x.tlog.size) when the request's old size is not it, or when the checkpoint has
that size and another root; 404 for an origin it does not follow; 403 when no key it trusts
for the origin signed; 422 when the proof does not link the checkpoint it holds to the new
one; 400 for anything malformed. A split view's two notes go to stderr. One request at a time
changes the state (the witness's file lock).
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
    Forbidden,
    UnknownLog,
    Witness,
    cosignature_lines,
)

SIZE = "text/x.tlog.size"
TEXT = "text/plain; charset=utf-8"


def _answer(witness: Witness, body: bytes) -> tuple[int, str, str]:
    try:
        cosigned = witness.add_checkpoint(body, int(time.time()))
    except Conflict as exc:
        return 409, f"{exc.size}\n", SIZE
    except UnknownLog as exc:
        return 404, f"{exc}\n", TEXT
    except Forbidden as exc:
        return 403, f"{exc}\n", TEXT
    except SplitView as exc:  # logged: the two notes prove the log lied
        sys.stderr.write(f"patchguard witness: {exc}\n{exc.first.decode()}\n{exc.second.decode()}")
        return (409 if "same size" in exc.reason else 422), f"{exc}\n", TEXT
    except TransparencyError as exc:
        return 400, f"{exc}\n", TEXT
    return 200, cosignature_lines(cosigned, witness.signer.verifier), TEXT


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
            self._send(*_answer(witness, body))

        def _send(self, status: int, text: str, kind: str = TEXT) -> None:
            data = text.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write(f"patchguard witness: {self.address_string()} {format % args}\n")

    return Handler


def serve(witness: Witness, host: str, port: int) -> http.server.ThreadingHTTPServer:
    return http.server.ThreadingHTTPServer((host, port), handler(witness))
