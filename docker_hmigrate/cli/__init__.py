"""The `docker hmigrate` command line, a Docker CLI plugin.

    plugin.py       the plugin protocol: metadata, argv as docker passes it, its socket
    flags.py        docker's global flags, and the rule for flags given twice
    app.py          the typer app, global options, run(): exit codes and error output
    commands/       the commands, one module per family (migrate, blocks, build, about,
                    install)
    state.py        what commands share: the run's state, parameters, hosts, completers
    completion.py   docker's `__complete` protocol, read off the command tree
    dockerstyle.py  help pages and usage errors as docker prints them

Imports run downwards only (tests/test_structure.py). This file imports nothing: the
metadata path (plugin.py) must stay light.
"""
