"""The real docker CLI and the installed plugin, as unit tests that compare with them or
run them use them (skipped where not installed)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

DOCKER = "/usr/local/bin/docker"
needs_docker_cli = pytest.mark.skipif(
    not os.access(DOCKER, os.X_OK), reason="docker CLI not at /usr/local/bin/docker"
)
CLEAN_ENV_DROP = ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "DOCKER_TLS_VERIFY",
                  "DOCKER_TLS", "DOCKER_CERT_PATH", "DOCKER_CLI_PLUGIN_SOCKET")  # fmt: skip


def plugin_executable() -> Path:
    """The installed console script (not a pyenv shim), next to this interpreter."""
    exe = Path(sys.executable).parent / "docker-hmigrate"
    if not exe.exists():
        pytest.skip("docker-hmigrate console script not installed (pip install -e .)")
    return exe


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV_DROP}
    env.update(extra)
    return env
