"""The JSON reply of the test stand-ins' HTTP servers (the KFP API, the Kubernetes API)."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler


def reply_json(handler: BaseHTTPRequestHandler, status: int, payload) -> None:
    """Send ``payload`` as a JSON response with ``status`` (and its Content-Length)."""
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
