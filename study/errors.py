"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class StudyError(Exception):
    """A problem the user can fix (bad params, bad data, missing model...).

    The message is shown as-is on one line, so it must name the problem and,
    where there is one, the way out.
    """


def hub_reason(exc: BaseException) -> str:
    """Why a hub load failed, in one line: each exception of the chain by type and first line
    (`OSError: ... (OfflineModeIsEnabled: ...)`), not only the outermost type."""
    parts: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(parts) < 3:
        seen.add(id(exc))
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        part = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        if part not in parts:  # libraries re-raise the same message in another wrapper
            parts.append(part)
        exc = exc.__cause__ or exc.__context__
    return parts[0] + "".join(f" ({p})" for p in parts[1:])
