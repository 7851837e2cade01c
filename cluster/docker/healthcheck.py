"""The image's HEALTHCHECK: GET the app's liveness endpoint, exit 0 when it answers 200, else 1.

``RAYML_HEALTH_URL`` (default ``http://127.0.0.1:8000/v2/health/live``) names it: the OIP liveness route of the
recommender, which fails only on faults inside a replica (a Redis outage flips readiness, not liveness; see
``rayml/serving/health_routes.py``). Standard library only, so it runs without the app's imports.
"""

import os
import sys
import urllib.request

URL = os.environ.get("RAYML_HEALTH_URL", "http://127.0.0.1:8000/v2/health/live")
TIMEOUT_S = float(os.environ.get("RAYML_HEALTH_TIMEOUT_S", "4"))


def main() -> int:
    try:
        with urllib.request.urlopen(URL, timeout=TIMEOUT_S) as response:
            body = response.read(512)
            ok = response.status == 200
    except OSError as exc:  # refused while starting, URLError, HTTPError (503: the replica is failing)
        print(f"unhealthy: {URL}: {exc}", file=sys.stderr)
        return 1
    print(f"{'healthy' if ok else 'unhealthy'}: {URL}: {body.decode(errors='replace')}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
