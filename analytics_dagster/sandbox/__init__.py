"""A local replica of the analytics API: same contract, deterministic data, faults on demand."""

from analytics_dagster.sandbox.app import DEFAULT_API_KEY, SandboxConfig
from analytics_dagster.sandbox.factories import FACTORIES, Document, Factory
from analytics_dagster.sandbox.server import SandboxServer
from analytics_dagster.sandbox.world import World

__all__ = ["DEFAULT_API_KEY", "FACTORIES", "Document", "Factory", "SandboxConfig", "SandboxServer", "World"]
