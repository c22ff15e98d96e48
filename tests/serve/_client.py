"""A few lines of HTTP for the tests (stdlib only: no client library needed)."""

from __future__ import annotations

import http.client
import json
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def request(url: str, method: str = "GET", path: str = "/", body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 120) -> Answer:
    """Send ``path`` exactly as given (no normalization of ``..``), answer status, headers and body."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def multipart(field: str, file_name: str, data: bytes, content_type: str = "image/png") -> tuple[bytes, dict[str, str]]:
    """A ``multipart/form-data`` body with one file field, and its Content-Type header."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{file_name}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def post_image(url: str, data: bytes, query: str = "", as_form: bool = True) -> Answer:
    """``POST /v1/predict`` with ``data`` as a multipart file field or as raw bytes."""
    body, headers = multipart("file", "image.png", data) if as_form else (data, {"Content-Type": "image/png"})
    return request(url, "POST", f"/v1/predict{query}", body, headers)
