"""The container's HEALTHCHECK: exit 0 when kimchi-bot's GET /healthz answers 200, else 1.

The slim image has no curl; this needs only the standard library. The port comes from KIMCHI_LISTEN.
"""
from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def healthz_url(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"  # listening everywhere: ask over loopback
    return f"http://{host}:{port or 8080}/healthz"


def main() -> int:
    url = healthz_url(os.environ.get("KIMCHI_LISTEN") or "127.0.0.1:8080")
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as err:  # 503 arrives as HTTPError, a subclass of URLError
        print(f"kimchi-bot health check: {url}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
