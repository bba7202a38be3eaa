"""ClickHouse's HTTP interface in front of chdb (PyPI's chdb-core: the current ClickHouse engine
in-process), so that the collector's ClickHouse store runs its suite against today's engine as
well as against Debian's clickhouse-server 18.16. Test harness only.

What the store uses of the interface, and only that: POST / with the statement as the body, or
with `?query=INSERT ... FORMAT JSONEachRow` and the rows as the body; GET /ping; answers 200 with
the result, or 500 with ClickHouse's own message (as the server does). One statement at a time:
the engine is one session (a lock serialises requests, which the server would run concurrently;
the store's correctness must not depend on either).

usage: chdb_http.py PORT DATA_DIR   (prints "ready" once listening)
"""

import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from chdb import session

PORT = int(sys.argv[1])
DATA = sys.argv[2]
ENGINE = session.Session(DATA)
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: the test prints what matters
        pass

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-ClickHouse-Server-Display-Name", "chdb")
        self.end_headers()
        self.wfile.write(body)

    def run(self, sql):
        if not sql.strip():
            return self.answer(400, b"Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)\n")
        try:
            with LOCK:
                # The statement names its own output format (FORMAT JSONEachRow) where it has
                # one; TabSeparated is the server's default otherwise.
                result = ENGINE.query(sql, "TabSeparated")
            body = result.bytes() if hasattr(result, "bytes") else bytes(result)
        except Exception as e:  # chdb raises its own error type with ClickHouse's message
            return self.answer(500, (str(e).strip() + "\n").encode())
        self.answer(200, body)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/ping":
            return self.answer(200, b"Ok.\n")
        q = urllib.parse.parse_qs(url.query).get("query", [""])[0]
        self.run(q)

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode()
        q = urllib.parse.parse_qs(url.query).get("query", [None])[0]
        # As the server does: the URL's statement first, the body is its data.
        self.run(body if q is None else q + "\n" + body)


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print("ready", flush=True)
server.serve_forever()
