"""A small HTTP server on 127.0.0.1 standing in for webhook receivers."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _peer_gone(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


class Receiver:
    """Answers with ``statuses`` in turn (then 200), records what it answered with 2xx."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.received: list[dict[str, Any]] = []
        self.attempts = 0
        self.hold = threading.Event()
        self.hold.set()  # clear() to make requests wait
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.attempts += 1
                if not receiver.hold.wait(timeout=30):
                    return
                if _peer_gone(self.connection):
                    return  # the sender died while we held its request: not delivered
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                try:
                    self.send_response(status)
                    self.end_headers()
                    self.wfile.write(b"{}")
                except OSError:
                    return  # the sender went away: nothing was delivered
                if 200 <= status < 300:
                    receiver.received.append(
                        {
                            "headers": dict(self.headers),
                            "body": json.loads(body or b"{}"),
                            "raw": body,
                        }
                    )

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()
