"""docker's global flags (--context, -H, --tls*, --config, -D, -l), read as the docker CLI
reads them, and the one rule for flags given twice.

Light on purpose: the plugin's metadata path imports it (no docker/typer/click here).
"""

from __future__ import annotations

# The docker CLI's global flags (cli/flags/options.go), which may precede the plugin name.
_LONG_VALUE = {
    "context": "context",
    "host": "hosts",
    "tlscacert": "tlscacert",
    "tlscert": "tlscert",
    "tlskey": "tlskey",
    "config": "config_dir",
    "log-level": "log_level",
}
_LONG_BOOL = {"tls": "tls", "tlsverify": "tlsverify", "debug": "debug"}
_SHORT_VALUE = {"c": "context", "H": "hosts", "l": "log_level"}
_SHORT_BOOL = {"D": "debug"}


class ArgError(Exception):
    """A docker global flag was malformed (e.g. missing its value)."""


def _parse_bool(flag: str, value: str) -> bool:
    # pflag accepts Go's strconv.ParseBool spellings.
    v = value.lower()
    if v in ("1", "t", "true"):
        return True
    if v in ("0", "f", "false"):
        return False
    raise ArgError(f'invalid argument "{value}" for "--{flag}" flag: expected true or false')


def _store(opts: dict[str, object], key: str, value: object) -> None:
    if key == "hosts":
        hosts = opts.setdefault("hosts", [])
        assert isinstance(hosts, list)
        hosts.append(value)
    else:
        opts[key] = value


def parse_global_flags(argv: list[str]) -> tuple[dict[str, object], list[str]]:
    """Consume the docker CLI's global flags at the head of argv, pflag-style.

    Returns (options, remaining args). Parsing stops at the first non-flag argument
    (normally the plugin name) or at a flag that is not one of docker's globals, which
    is then left for the command-line parser of the plugin itself.
    """
    opts: dict[str, object] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if name in _LONG_VALUE:
                if not eq:
                    if i + 1 >= len(argv):
                        raise ArgError(f"flag needs an argument: --{name}")
                    i += 1
                    value = argv[i]
                _store(opts, _LONG_VALUE[name], value)
            elif name in _LONG_BOOL:
                _store(opts, _LONG_BOOL[name], _parse_bool(name, value) if eq else True)
            else:
                break
        elif arg.startswith("-") and len(arg) > 1:
            cluster = arg[1:]
            # Only consume the token if every letter is a known shorthand: -D, -Dl info, -cNAME.
            j = 0
            pending: list[tuple[str, object]] = []
            value_key: str | None = None
            value: object = None
            ok = True
            while j < len(cluster):
                ch = cluster[j]
                if ch in _SHORT_BOOL:
                    if cluster[j + 1 : j + 2] == "=":
                        pending.append((_SHORT_BOOL[ch], _parse_bool(ch, cluster[j + 2 :])))
                        break
                    pending.append((_SHORT_BOOL[ch], True))
                    j += 1
                elif ch in _SHORT_VALUE:
                    value_key = _SHORT_VALUE[ch]
                    rest = cluster[j + 1 :]
                    if rest.startswith("="):
                        rest = rest[1:]
                    if rest:
                        value = rest
                    else:
                        if i + 1 >= len(argv):
                            raise ArgError(f"flag needs an argument: '{ch}' in -{ch}")
                        i += 1
                        value = argv[i]
                    break
                else:
                    ok = False
                    break
            if not ok:
                break
            for key, val in pending:
                _store(opts, key, val)
            if value_key is not None:
                _store(opts, value_key, value)
        else:
            break
        i += 1
    return opts, argv[i:]


def merge(first: dict[str, object], later: dict[str, object]) -> dict[str, object]:
    """docker's globals given twice (before and after `hmigrate`, or by `docker` and again
    on the command line): later flags win; -H given later replaces every earlier one; -D
    sticks. Both dicts hold only the flags given, by hosts.GlobalOptions' field names."""
    out = dict(first)
    for key, value in later.items():
        if key == "debug":
            out["debug"] = bool(first.get("debug")) or bool(value)
        else:
            out[key] = value
    return out
