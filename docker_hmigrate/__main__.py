"""`python -m docker_hmigrate` runs the plugin entry point."""

import sys

from docker_hmigrate.cli.plugin import main

sys.exit(main())
