"""docker-hmigrate: live-migrate running containers between Docker hosts, same or different ISA."""

__version__ = "0.1.0"
