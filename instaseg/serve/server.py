"""Running the application with uvicorn: loopback by default, and a warning when it is not."""

from __future__ import annotations

import ipaddress

from fastapi import FastAPI

__all__ = ["LOCAL_HOST_NAMES", "is_loopback", "run_server", "exposure_warning"]

LOCAL_HOST_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int) -> str | None:
    """What to tell someone binding a non-loopback address (None on loopback)."""
    if is_loopback(host):
        return None
    return (f"serving on {host}:{port}, which other machines can reach: the API has no authentication; "
            "anyone who can reach this port can run the model and read the dataset's images "
            "(the default --host 127.0.0.1 keeps it on this machine)")


def run_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8765, log_level: str = "info") -> None:
    """Serve ``app`` until interrupted (Ctrl-C)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug")
