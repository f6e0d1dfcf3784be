"""tickmesh market-data client: failover across regions with resume, every record exactly once."""

from .client import (
    Client,
    ClientError,
    Connected,
    Disconnected,
    Gap,
    Record,
    RefusedError,
    ServerError,
    Snapshot,
    Stats,
    Tracker,
    UnauthorizedError,
    UnreachableError,
)

__all__ = [
    "Client",
    "ClientError",
    "Connected",
    "Disconnected",
    "Gap",
    "Record",
    "RefusedError",
    "ServerError",
    "Snapshot",
    "Stats",
    "Tracker",
    "UnauthorizedError",
    "UnreachableError",
]

