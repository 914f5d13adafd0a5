"""A fault-injecting HTTP proxy for the ECS tests (stdlib only).

Forwards every request to UPSTREAM (a moto server) unless an armed fault matches it. The
tests point the worker's AWS_ENDPOINT_URL_ECS here, arm faults and read counters.

Usage: fault_proxy.py UPSTREAM_URL [PORT]   (PORT 0 or absent: any free port)
Prints "listening on 127.0.0.1:PORT" as its first line on stdout once it accepts connections.

Control endpoints (answered here, never forwarded):
  POST   /__faults  {"target": "CreateService" | "*", "count": N, "mode": MODE, "skip": S}
                    arms a fault for the next N matching calls (-1: until cleared), after
                    letting S matching calls through (default 0). The target
                    is the part of the X-Amz-Target header after its last '.'
                    (AmazonEC2ContainerServiceV20141113.CreateService -> CreateService).
                    MODE:
                      throttle            HTTP 400, x-amzn-ErrorType: ThrottlingException
                      unavailable         HTTP 503, x-amzn-ErrorType: ServiceUnavailableException
                      drop_after_forward  forwards the call (so it takes effect upstream), then
                                          answers HTTP 500 InternalFailure and closes: a crash
                                          between "request sent" and "result stored"
                      close_after_forward forwards the call, then closes without any answer
                      close               closes without any answer, forwarding nothing
  GET    /__faults  the armed faults
  DELETE /__faults  clears every fault
  GET    /__stats   {"forwarded": {TARGET: n}, "faulted": {TARGET: n},
                     "maxBatch": {TARGET: the most items in a call's "services" list}}
                    (a drop_after_forward call counts in both forwarded and faulted)
  DELETE /__stats   resets the counters
"""

import http.client
import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
}

MODES = {"throttle", "unavailable", "drop_after_forward", "close_after_forward", "close"}

FAULT_RESPONSES = {
    "throttle": (400, "ThrottlingException", "Rate exceeded"),
    "unavailable": (503, "ServiceUnavailableException", "Service unavailable (injected by the test proxy)"),
    "drop_after_forward": (500, "InternalFailure", "Internal failure (injected by the test proxy after forwarding)"),
}


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.faults: list = []
        self.forwarded: dict = {}
        self.faulted: dict = {}
        self.max_batch: dict = {}

    def take_fault(self, target: str):
        """The mode of the first armed fault matching target, consuming one of its count."""
        with self.lock:
            for fault in self.faults:
                if fault["count"] != 0 and fault["target"] in ("*", target):
                    if fault["skip"] > 0:
                        fault["skip"] -= 1
                        continue
                    if fault["count"] > 0:
                        fault["count"] -= 1
                    return fault["mode"]
        return None

    def count(self, table: dict, target: str) -> None:
        with self.lock:
            table[target] = table.get(target, 0) + 1

    def note_batch(self, target: str, body: bytes) -> None:
        """Records the largest "services" list a call carried (DescribeServices takes 10)."""
        try:
            items = json.loads(body).get("services")
        except (ValueError, AttributeError):
            return
        if isinstance(items, list):
            with self.lock:
                self.max_batch[target] = max(self.max_batch.get(target, 0), len(items))


STATE = State()
UPSTREAM = urllib.parse.urlsplit(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:5000")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    # ---- plumbing -------------------------------------------------------------------------

    def log_message(self, fmt: str, *args) -> None:  # to stderr, one line per call
        sys.stderr.write("fault_proxy: " + (fmt % args) + "\n")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, body: bytes, headers: list, close: bool = False) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _json(self, status: int, value) -> None:
        self._reply(status, json.dumps(value).encode(), [("Content-Type", "application/json")])

    def _aws_error(self, status: int, code: str, message: str, close: bool = False) -> None:
        body = json.dumps({"__type": code, "message": message}).encode()
        self._reply(
            status,
            body,
            [
                ("Content-Type", "application/x-amz-json-1.1"),
                ("x-amzn-ErrorType", code),
                ("x-amzn-RequestId", "fault-proxy-injected"),
            ],
            close=close,
        )

    def _target(self) -> str:
        target = self.headers.get("X-Amz-Target")
        return target.rsplit(".", 1)[-1] if target else "(none)"

    def _forward(self, body: bytes):
        conn = http.client.HTTPConnection(UPSTREAM.hostname, UPSTREAM.port or 80, timeout=60)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    conn.putheader(k, v)
            conn.putheader("Content-Length", str(len(body)))
            conn.putheader("Connection", "close")
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
            headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
            return resp.status, headers, data
        finally:
            conn.close()

    # ---- control --------------------------------------------------------------------------

    def _control(self, body: bytes) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/__faults" and self.command == "POST":
            try:
                fault = json.loads(body or b"{}")
                fault = {
                    "target": str(fault.get("target", "*")),
                    "count": int(fault.get("count", 1)),
                    "mode": str(fault.get("mode", "throttle")),
                    "skip": int(fault.get("skip", 0)),
                }
            except (ValueError, TypeError) as e:
                return self._json(400, {"error": f"bad fault: {e}"})
            if fault["mode"] not in MODES:
                return self._json(400, {"error": f"mode must be one of {sorted(MODES)}"})
            with STATE.lock:
                STATE.faults.append(fault)
                faults = list(STATE.faults)
            return self._json(200, {"faults": faults})
        if path == "/__faults" and self.command == "GET":
            with STATE.lock:
                return self._json(200, {"faults": list(STATE.faults)})
        if path == "/__faults" and self.command == "DELETE":
            with STATE.lock:
                STATE.faults.clear()
            return self._json(200, {"faults": []})
        if path == "/__stats" and self.command == "GET":
            with STATE.lock:
                stats = {
                    "forwarded": dict(STATE.forwarded),
                    "faulted": dict(STATE.faulted),
                    "maxBatch": dict(STATE.max_batch),
                }
            return self._json(200, stats)
        if path == "/__stats" and self.command == "DELETE":
            with STATE.lock:
                STATE.forwarded.clear()
                STATE.faulted.clear()
                STATE.max_batch.clear()
            return self._json(200, {"forwarded": {}, "faulted": {}, "maxBatch": {}})
        return self._json(404, {"error": f"no control endpoint {self.command} {path}"})

    # ---- every request --------------------------------------------------------------------

    def _handle(self) -> None:
        body = self._body()
        if self.path.startswith("/__"):
            return self._control(body)
        target = self._target()
        STATE.note_batch(target, body)
        mode = STATE.take_fault(target)
        if mode is not None:
            STATE.count(STATE.faulted, target)
            self.log_message("fault %s on %s", mode, target)
        if mode in ("throttle", "unavailable"):
            status, code, message = FAULT_RESPONSES[mode]
            return self._aws_error(status, code, message)
        if mode == "close":
            self.close_connection = True
            return
        try:
            status, headers, data = self._forward(body)
        except OSError as e:
            self.log_message("upstream error on %s: %s", target, e)
            return self._aws_error(502, "InternalFailure", f"upstream unreachable: {e}", close=True)
        STATE.count(STATE.forwarded, target)
        if mode == "drop_after_forward":
            status, code, message = FAULT_RESPONSES[mode]
            return self._aws_error(status, code, message, close=True)
        if mode == "close_after_forward":
            self.close_connection = True
            return
        self._reply(status, data, headers)

    do_GET = _handle
    do_POST = _handle
    do_PUT = _handle
    do_DELETE = _handle
    do_HEAD = _handle
    do_PATCH = _handle


def main() -> None:
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
