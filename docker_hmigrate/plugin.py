"""The `docker-hmigrate` executable: pyproject's console script names this module, and
installed console scripts import it by that name. The plugin is docker_hmigrate/cli/
(its protocol: cli/plugin.py)."""

from docker_hmigrate.cli.plugin import main

__all__ = ["main"]
