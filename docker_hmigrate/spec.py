"""The target container's configuration, derived from the source container's inspect data.

`docker inspect` returns Config and HostConfig in the same shape that POST
/containers/create takes, so the source's configuration is carried over whole (command,
env, labels, ports, mounts, restart policy, resource limits ...), less what belongs to
one daemon (its ids, paths and generated names).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

# Networks every daemon has: never created, never attached by name.
BUILTIN_NETWORKS = {"bridge", "host", "none", "default"}
# HostConfig fields that name things of the source daemon only.
HOST_ONLY_FIELDS = ("ContainerIDFile",)


@dataclass
class Volume:
    name: str
    destination: str
    driver: str


@dataclass
class ContainerSpec:
    name: str
    image: str
    body: dict[str, Any]  # the POST /containers/create body
    volumes: list[Volume] = field(default_factory=list)
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)  # user networks
    binds: list[str] = field(default_factory=list)  # host paths the target must have


def target_spec(inspect: dict[str, Any], name: str, image: str | None = None) -> ContainerSpec:
    """The create body for the target container; `image` overrides (e.g. the ISA variant)."""
    config = copy.deepcopy(inspect["Config"])
    host_config = copy.deepcopy(inspect["HostConfig"])
    for key in HOST_ONLY_FIELDS:
        host_config.pop(key, None)
    image = image or config["Image"]
    config["Image"] = image
    # The hostname lives in the checkpointed UTS namespace: keep it, or the restored process
    # would see a different name from the one it had.
    config["Hostname"] = inspect["Config"].get("Hostname") or inspect["Id"][:12]

    volumes = [
        Volume(m["Name"], m["Destination"], m.get("Driver") or "local")
        for m in inspect.get("Mounts", []) if m.get("Type") == "volume"
    ]
    binds = [m["Source"] for m in inspect.get("Mounts", []) if m.get("Type") == "bind"]

    networks: dict[str, dict[str, Any]] = {}
    endpoints: dict[str, Any] = {}
    for net_name, ep in (inspect.get("NetworkSettings", {}).get("Networks") or {}).items():
        if net_name in BUILTIN_NETWORKS:
            continue
        networks[net_name] = ep
        endpoints[net_name] = {
            k: ep[k] for k in ("IPAMConfig", "Links", "Aliases", "DriverOpts") if ep.get(k)
        }
        if ep.get("IPAddress"):
            # The same address on the target: CRIU restores established TCP connections
            # only on the address they had (validate.address_checks sees that it is free).
            ipam = dict(endpoints[net_name].get("IPAMConfig") or {})
            ipam["IPv4Address"] = ep["IPAddress"]
            endpoints[net_name]["IPAMConfig"] = ipam
    body: dict[str, Any] = {**config, "HostConfig": host_config}
    if endpoints:
        # The create call attaches one network; the others are connected before start.
        first = next(iter(endpoints))
        body["NetworkingConfig"] = {"EndpointsConfig": {first: endpoints[first]}}
    return ContainerSpec(name=name, image=image, body=body, volumes=volumes,
                         networks=networks, binds=binds)
