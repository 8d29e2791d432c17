"""Starts the API app on 127.0.0.1 (a free port) in a background thread for a test, and stops it."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from tuneforge.infer.serve_config import ServeSettings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings(**overrides) -> ServeSettings:
    values = dict(host="127.0.0.1", port=free_port(), api_key=None, model_name="tiny", max_batch_size=8,
                  max_concurrent=16)
    values.update(overrides)
    return ServeSettings(**values)


@contextlib.contextmanager
def running(app, port: int):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
