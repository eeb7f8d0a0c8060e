"""User-facing errors: one line that says what is wrong and what to do, exit status 2."""


class PlmkitError(Exception):
    """A mistake in the user's input (a path, a name, a value), not a bug in plmkit.

    The CLI prints ``plmkit: error: <message>`` without a traceback and exits with status 2.
    Write the message as one sentence: what was wrong, then what to do about it.
    """

    exit_code = 2


class PluginError(PlmkitError):
    """A plugin could not be loaded or registered (broken import, duplicate objective name)."""


def argument_error(message: str, command: str, flags: dict[str, str] | None = None) -> PlmkitError:
    """jsonargparse's multi-line error -> ``invalid value for KEY: REASON; run '... --help'``.

    ``flags`` maps a parser key to the flag the user typed (``max_train`` -> ``--max-train``).
    """
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    keys: list[str] = []
    details: list[str] = []
    given = ""
    for line in lines:
        if line.startswith('Parser key "'):
            key, _, rest = line[len('Parser key "'):].partition('"')
            keys.append(key)
            details = [rest.lstrip(":").strip()]
        elif line.startswith("Given value:"):
            given = line.split(":", 1)[1].strip()
        elif keys:
            details.append(line.lstrip("- "))
    details = [d for d in details if d and not d.startswith(("Does not validate", "Subtypes:",
                                                            "Errors:", "Given value type:"))]
    expected = [d for d in details if d.startswith("Expected")]
    reason = (expected or details or ["invalid value"])[0]
    if given.startswith("NestedArg("):  # a dotted flag into a nested block: no plain value
        given = ""
    if keys:
        key = ".".join(dict.fromkeys(keys))
        key = (flags or {}).get(key, key)
        if given and "Got value" not in reason:
            reason = f"{reason}, got {given!r}"
        text = f"invalid value for {key}: {reason}"
    elif lines and lines[0].startswith(_REQUIRED):  # keys as the flags a user types
        names = [name.strip() for name in lines[0][len(_REQUIRED):].split(",")]
        text = _REQUIRED + ", ".join((flags or {}).get(name, name) for name in names)
    else:
        text = lines[0] if lines else "invalid arguments"
    return PlmkitError(f"{text}; run '{command} --help'")


_REQUIRED = "the following arguments are required: "
