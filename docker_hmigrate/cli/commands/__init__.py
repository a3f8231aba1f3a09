"""The commands, one module per family; each lists its commands in COMMANDS and
cli/app.py registers them all."""
