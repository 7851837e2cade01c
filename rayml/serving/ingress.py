"""Which HTTP ingress a Serve cluster runs, as the environment its processes must start with.

Ray 2.60 reads its ingress settings from environment variables in every Serve process (controller, HAProxy
manager, replicas), so they are set where Ray starts: the ``serve run`` process that ``rayml serve`` launches,
``ray start``, or the KubeRay head and worker containers.

- ``haproxy`` (the shipped path): HAProxy on ``http_options.port`` in front of each ingress replica's own HTTP
  server (direct ingress). Far faster than the Serve proxy on small boxes (``docs/benchmarks.md``).
- ``proxy``: Ray Serve's Python HTTP proxy (Ray's default), one setting away: ``--ingress proxy`` or
  ``RAYML_INGRESS=proxy``.

Every port and path is per cluster (:class:`IngressPorts`), so test clusters, e2e clusters and a running demo on
one machine never collide. ``RAYML_INGRESS`` and an explicit ``RAY_SERVE_*`` variable in the caller's
environment win over the values computed here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rayml.config import ConfigError
from rayml.ports import free_port, free_range

Ingress = Literal["haproxy", "proxy"]
INGRESSES: tuple[Ingress, ...] = ("haproxy", "proxy")
DRAIN_S = 2  # a draining direct-ingress replica refuses new connections after this (Ray's default: 30 s)
# HAProxy's retry-on is one setting for every route, and it replays POSTs as readily as GETs (checked against
# the bundled HAProxy 2.8). So only a failed connection (nothing was sent) is retried: never a POST /events that
# a dying replica may already have applied. Requests in flight on a replica that dies are lost (500).
RETRY_ON = "conn-failure"  # see the module docstring: HAProxy would replay a POST too
CLIENT_TIMEOUT_S = 30  # HAProxy's `timeout client` (Ray's default: 3600 s, which lets slow clients hold sockets)
SERVER_TIMEOUT_S = 30  # `timeout server`: a hung replica costs its requests this long, not forever


@dataclass(frozen=True)
class IngressPorts:
    """The ports one cluster's ingress opens besides ``http_options.port`` (all chosen free when not given)."""

    haproxy_stats: int
    haproxy_metrics: int
    fallback_http: int
    fallback_grpc: int
    direct_http_min: int
    direct_grpc_min: int
    direct_span: int = 64  # ports in each direct-ingress range (one per ingress replica on the node)

    @classmethod
    def free(cls, span: int = 64) -> IngressPorts:
        """Free ports now, and two free direct-ingress ranges of ``span`` ports (:mod:`rayml.ports`)."""
        return cls(free_port(), free_port(), free_port(), free_port(), free_range(span), free_range(span), span)


def chosen_ingress(requested: str | None = None) -> Ingress:
    """``requested``, else ``RAYML_INGRESS``, else ``haproxy``.

    Raises:
        ConfigError: an unknown value, naming where it came from.
    """
    source, value = ("--ingress", requested) if requested else ("RAYML_INGRESS", os.environ.get("RAYML_INGRESS"))
    value = value or "haproxy"
    if value not in INGRESSES:
        raise ConfigError(f"{source}: {value!r} is not an ingress; use one of {', '.join(INGRESSES)}")
    return value


def ingress_env(ingress: Ingress, state_dir: str | Path, ports: IngressPorts | None = None,
                threads: int | None = None) -> dict[str, str]:
    """The environment variables that give a cluster ``ingress`` with its own ports and files.

    Args:
        state_dir: this cluster's folder for HAProxy's config, sockets and server state (Ray's default is a
            shared ``/tmp/haproxy-serve``).
        threads: HAProxy threads (default: the machine's cores, at most 4).
    """
    if ingress == "proxy":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
    ports = ports or IngressPorts.free()
    state = Path(state_dir).resolve()
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        # User code on the replica's own event loop (no thread hop a request), buffered request logs.
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(state / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(state),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(state / "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(ports.haproxy_stats),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(ports.haproxy_metrics),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(ports.fallback_http),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(ports.fallback_grpc),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(ports.direct_http_min),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(ports.direct_http_min + ports.direct_span),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(ports.direct_grpc_min),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(ports.direct_grpc_min + ports.direct_span),
        "RAY_SERVE_HAPROXY_NBTHREAD": str(threads or min(4, os.cpu_count() or 1)),
        "RAY_SERVE_HAPROXY_RETRY_ON": RETRY_ON,
        "RAY_SERVE_HAPROXY_RETRIES": "2",
        "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": str(CLIENT_TIMEOUT_S),
        "RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S": str(SERVER_TIMEOUT_S),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DRAIN_S),
    }


def with_ingress(ingress: Ingress, state_dir: str | Path, base: dict[str, str] | None = None,
                 ports: IngressPorts | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) plus :func:`ingress_env`; variables already in ``base``
    win, so an operator can override any single one."""
    env = dict(os.environ if base is None else base)
    for key, value in ingress_env(ingress, state_dir, ports).items():
        env.setdefault(key, value)
    return env
