"""RFC 3339 timestamps at nanosecond precision.

The API sends 0 to 9 fractional digits (``…36Z``, ``…36.9Z``, ``…02.004032433Z``). Such strings
do not sort as text (``"36.9Z" < "36Z"``) and Python's ``datetime`` keeps only microseconds, so
both the sandbox and the source compare timestamps as integer nanoseconds since the epoch.
"""

from __future__ import annotations

import calendar
import re
import time
from typing import Optional

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))\Z",
    re.ASCII,  # \d is 0-9 only, and \Z: no trailing newline (what the models' SQL accepts too)
)
NS_PER_SECOND = 1_000_000_000


def parse_ns(value: str) -> int:
    """Parse an RFC 3339 timestamp into integer nanoseconds since the Unix epoch (UTC).

    Raises:
        ValueError: the value is not an RFC 3339 timestamp.
    """
    match = _RFC3339.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {value!r}")
    year, month, day, hour, minute, second, frac, zulu, sign, off_h, off_m = match.groups()
    seconds = calendar.timegm(
        (int(year), int(month), int(day), int(hour), int(minute), int(second), 0, 0, 0)
    )
    if not zulu:
        offset = int(off_h) * 3600 + int(off_m) * 60
        seconds -= offset if sign == "+" else -offset
    nanos = int(frac.ljust(9, "0")) if frac else 0
    return seconds * NS_PER_SECOND + nanos


def format_ns(ns: int, digits: int = 9) -> str:
    """Format nanoseconds since the epoch as RFC 3339 UTC with ``digits`` fractional digits.

    Digits beyond ``digits`` are truncated, so pass a value that is a multiple of
    ``10 ** (9 - digits)`` when the string must represent it exactly.
    """
    seconds, nanos = divmod(ns, NS_PER_SECOND)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if digits <= 0:
        return base + "Z"
    return f"{base}.{nanos:09d}"[: len(base) + 1 + digits] + "Z"


# Ids are `<prefix>_` and a lower-case ULID: 10 characters of milliseconds since the epoch in
# Crockford base32 (an alphabet whose order is ASCII order), then 16 random ones. So ids sort by
# the instant they were taken, and the smallest id of an instant can be written down.
CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def id_floor(prefix: str, ns: int) -> str:
    """The smallest id of `prefix` taken at or after the millisecond of `ns`: every id of that
    millisecond or later sorts after it (`after=` this id lists them)."""
    ms = max(ns, 0) // 1_000_000
    return f"{prefix}_" + "".join(CROCKFORD[(ms >> s) & 31] for s in range(45, -5, -5)) + "0" * 16


def id_ns(event_id: str) -> Optional[int]:
    """The instant an id was taken (its ULID's first 10 characters: milliseconds), in ns; None
    when they are not a ULID's (`id_floor` is its inverse, to the millisecond)."""
    head = event_id.rpartition("_")[2][:10]
    if len(head) < 10 or any(c not in CROCKFORD for c in head):
        return None
    return sum(CROCKFORD.index(c) << 5 * (9 - n) for n, c in enumerate(head)) * 1_000_000
