"""Text of values the way .NET writes and reads it, with the invariant culture.

* :func:`to_string` is ``ToString()`` for every run-time value (and what string concatenation
  and interpolation use).
* :func:`format_value` is ``ToString(format)`` / ``{value:format}``: standard and custom numeric
  formats, DateTime, TimeSpan and Guid formats.
* :func:`composite_format` is ``string.Format``.
* :func:`parse_datetime`, :func:`parse_timespan` are ``DateTime.Parse`` and ``TimeSpan.Parse``
  for the forms policies use (ISO 8601, RFC 1123, invariant ``MM/dd/yyyy HH:mm:ss``).

Culture-sensitive .NET output (default DateTime text, month names) is produced for the
invariant culture; API Management's gateway may run with another culture.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from . import values as v
from .errors import ExpressionRuntimeError, format_error

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_TICK = timedelta(microseconds=1)
#: Largest precision of a numeric format ("D1000"): .NET allows 999,999,999, which would
#: let one expression allocate gigabytes.
MAX_PRECISION = 1000


def to_string(value: object) -> str:
    """``value.ToString()``; null gives "" (as concatenation treats it)."""
    if value is None:
        return ""
    vt = type(value)
    if vt is str or vt is v.Char:
        return value  # type: ignore[return-value]
    if vt is bool:
        return "True" if value else "False"
    if vt is int:
        return str(value)
    if vt is float:
        return format_double(value)  # type: ignore[arg-type]
    if vt is v.DateTime:
        return format_datetime(value, "G")  # type: ignore[arg-type]
    if vt is timedelta:
        return format_timespan(value, "c")  # type: ignore[arg-type]
    if vt is v.Guid:
        return value.text  # type: ignore[attr-defined]
    if vt is v.EnumValue:
        return value.name  # type: ignore[attr-defined]
    if vt is v.KeyValuePair:
        return f"[{to_string(value.key)}, {to_string(value.value)}]"  # type: ignore[attr-defined]
    method = getattr(vt, "cs_to_string", None)
    if method is not None:
        return method(value)
    return v.runtime_type_name(value)


# -- numbers -------------------------------------------------------------------------------


def format_double(x: float) -> str:
    """``double.ToString()``: the shortest text that round-trips, .NET Core 3.0+ style."""
    if x != x:
        return "NaN"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    sign, digits, exponent = Decimal(repr(x)).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    exponent = int(exponent) + len(digits) - len(text)   # value = int(text) * 10**exponent
    magnitude = len(text) + exponent - 1                  # decimal exponent of first digit
    prefix = "-" if sign else ""
    if magnitude >= 15 or magnitude < -4:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{prefix}{mantissa}E{'+' if magnitude >= 0 else '-'}{abs(magnitude):02d}"
    if exponent >= 0:
        return prefix + text + "0" * exponent
    point = len(text) + exponent
    if point > 0:
        return prefix + text[:point] + "." + text[point:]
    return prefix + "0." + "0" * -point + text


def _group(digits: str) -> str:
    """``1234567`` -> ``1,234,567``."""
    head = len(digits) % 3 or 3
    parts = [digits[:head]] + [digits[i:i + 3] for i in range(head, len(digits), 3)]
    return ",".join(parts)


def _fixed(x: float | int, decimals: int) -> str:
    if isinstance(x, int):
        return str(x) + ("." + "0" * decimals if decimals else "")
    return f"{x:.{decimals}f}"


def format_number(x: int | float, fmt: str) -> str:
    """``ToString(fmt)`` of an int, long or double."""
    if not fmt:
        return to_string(x)
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return to_string(x)
    match = re.fullmatch(r"([A-Za-z])(\d{0,9})", fmt)
    if match is None:
        return _custom_number(x, fmt)
    letter, digits = match.group(1), match.group(2)
    precision = int(digits) if digits else None
    if precision is not None and precision > MAX_PRECISION:
        raise format_error(f"tlsgate limits format precision to {MAX_PRECISION} digits.")
    upper = letter.upper()
    if upper == "D":
        if not isinstance(x, int):
            raise format_error("Format specifier was invalid.")
        body = str(abs(x)).rjust(precision or 0, "0")
        return ("-" if x < 0 else "") + body
    if upper == "X":
        if not isinstance(x, int):
            raise format_error("Format specifier was invalid.")
        if x < 0:
            x &= 0xFFFFFFFF if x >= -(2**31) else 0xFFFFFFFFFFFFFFFF
        text = format(x, "X" if letter == "X" else "x")
        return text.rjust(precision or 0, "0")
    if upper == "F":
        return _fixed(x, 2 if precision is None else precision)
    if upper == "N":
        text = _fixed(abs(x), 2 if precision is None else precision)
        whole, _, frac = text.partition(".")
        negative = x < 0 and float(text) != 0
        return ("-" if negative else "") + _group(whole) + ("." + frac if frac else "")
    if upper == "P":
        text = format_number(x * 100, f"N{2 if precision is None else precision}")
        return text + " %"
    if upper == "C":
        text = format_number(abs(x), f"N{2 if precision is None else precision}")
        return ("-" if x < 0 else "") + "¤" + text
    if upper == "E":
        decimals = 6 if precision is None else precision
        text = f"{float(x):.{decimals}e}"
        mantissa, _, exponent = text.partition("e")
        sign = exponent[0]
        return f"{mantissa}{letter}{sign}{exponent[1:].lstrip('0').rjust(3, '0')}"
    if upper == "G":
        if precision is None or precision == 0:
            return to_string(x)
        if isinstance(x, int) and len(str(abs(x))) <= precision:
            return str(x)
        text = f"{float(x):.{precision}g}"
        if "e" in text:
            mantissa, _, exponent = text.partition("e")
            digits = exponent[1:].lstrip("0").rjust(2, "0")
            return f"{mantissa}{'E' if letter == 'G' else 'e'}{exponent[0]}{digits}"
        return text
    if upper == "R":
        return to_string(x)
    raise format_error("Format specifier was invalid.")


def _custom_number(x: int | float, fmt: str) -> str:
    """Custom numeric formats: ``0``, ``#``, ``.``, ``,``, ``%``, quoted and escaped text.

    Only the common shapes (``0.00``, ``#,##0``, ``000``, ``0.#%``) are supported; sections
    (``;``) and exponents are not.
    """
    if ";" in fmt or re.search(r"[eE][+-]?0", fmt):
        raise ExpressionRuntimeError(f"the numeric format '{fmt}' is not supported by tlsgate",
                                     "FormatException")
    # Split into literal prefix, digit pattern and literal suffix.
    tokens: list[tuple[str, str]] = []   # ("lit", text) or ("pat", char)
    index = 0
    while index < len(fmt):
        ch = fmt[index]
        if ch in "'\"":
            end = fmt.find(ch, index + 1)
            end = len(fmt) if end < 0 else end
            tokens.append(("lit", fmt[index + 1:end]))
            index = end + 1
            continue
        if ch == "\\" and index + 1 < len(fmt):
            tokens.append(("lit", fmt[index + 1]))
            index += 2
            continue
        tokens.append(("pat" if ch in "0#.,%" else "lit", ch))
        index += 1
    pattern_positions = [i for i, (kind, ch) in enumerate(tokens) if kind == "pat" and ch != "%"]
    percent = any(kind == "pat" and ch == "%" for kind, ch in tokens)
    value = x * 100 if percent else x
    if not pattern_positions:
        prefix = "".join(text if kind == "lit" else "%" for kind, text in tokens)
        return prefix
    first, last = pattern_positions[0], pattern_positions[-1]
    pattern = "".join(ch for kind, ch in tokens[first:last + 1] if kind == "pat" and ch != "%")
    prefix = "".join(ch for kind, ch in tokens[:first])
    suffix = "".join(ch for kind, ch in tokens[last + 1:])
    inner_literals = "".join(ch for kind, ch in tokens[first:last + 1] if kind == "lit")
    integer_part, _, fraction_part = pattern.partition(".")
    grouping = "," in integer_part.rstrip(",") and integer_part.strip(",") != ""
    scale = len(integer_part) - len(integer_part.rstrip(","))
    value = value / (1000 ** scale) if scale else value
    min_int = integer_part.replace(",", "").count("0")
    if "0" in integer_part:
        min_int = len(integer_part.replace(",", "")) - integer_part.replace(",", "").index("0")
    min_frac = len(fraction_part.rstrip("#"))
    max_frac = len(fraction_part)
    text = f"{abs(value):.{max_frac}f}" if isinstance(value, float) or max_frac else str(abs(value))
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0")
    frac = frac.ljust(min_frac, "0")
    whole = whole.lstrip("0")
    whole = whole.rjust(min_int, "0")
    if grouping and whole:
        whole = _group(whole)
    body = whole + ("." + frac if frac else "")
    negative = (value < 0) and any(ch not in "0.," for ch in body)
    return ("-" if negative else "") + prefix + body + inner_literals + suffix


# -- DateTime --------------------------------------------------------------------------------

_STANDARD_DATETIME = {
    "d": "MM/dd/yyyy", "D": "dddd, dd MMMM yyyy", "f": "dddd, dd MMMM yyyy HH:mm",
    "F": "dddd, dd MMMM yyyy HH:mm:ss", "g": "MM/dd/yyyy HH:mm", "G": "MM/dd/yyyy HH:mm:ss",
    "M": "MMMM dd", "m": "MMMM dd", "O": "yyyy'-'MM'-'dd'T'HH':'mm':'ss'.'fffffffK",
    "o": "yyyy'-'MM'-'dd'T'HH':'mm':'ss'.'fffffffK", "R": "ddd, dd MMM yyyy HH':'mm':'ss 'GMT'",
    "r": "ddd, dd MMM yyyy HH':'mm':'ss 'GMT'", "s": "yyyy'-'MM'-'dd'T'HH':'mm':'ss",
    "t": "HH:mm", "T": "HH:mm:ss", "u": "yyyy'-'MM'-'dd HH':'mm':'ss'Z'",
    "U": "dddd, dd MMMM yyyy HH:mm:ss", "Y": "yyyy MMMM", "y": "yyyy MMMM",
}
_RUN = re.compile(r"(d+|f+|F+|g+|h+|H+|K|m+|M+|s+|t+|y+|z+)")


def format_datetime(value: v.DateTime, fmt: str | None) -> str:
    """``DateTime.ToString(fmt)`` with the invariant culture (and the local zone = UTC)."""
    if not fmt:
        fmt = "G"
    if len(fmt) == 1:
        if fmt not in _STANDARD_DATETIME:
            raise format_error("Input string was not in a correct format.")
        fmt = _STANDARD_DATETIME[fmt]
    elif len(fmt) == 2 and fmt[0] == "%":
        fmt = fmt[1]
    dt = value.value
    out: list[str] = []
    index = 0
    while index < len(fmt):
        ch = fmt[index]
        if ch in "'\"":
            end = fmt.find(ch, index + 1)
            if end < 0:
                raise format_error("Cannot find a matching quote character for the character "
                                   f"'{ch}'.")
            out.append(fmt[index + 1:end])
            index = end + 1
            continue
        if ch == "\\":
            if index + 1 >= len(fmt):
                raise format_error("Input string was not in a correct format.")
            out.append(fmt[index + 1])
            index += 2
            continue
        if ch == "%":
            index += 1
            continue
        match = _RUN.match(fmt, index)
        if match is None:
            out.append(ch)
            index += 1
            continue
        run = match.group(0)
        out.append(_datetime_field(value, dt, run))
        index = match.end()
    return "".join(out)


def _datetime_field(value: v.DateTime, dt: datetime, run: str) -> str:
    ch, count = run[0], len(run)
    if ch == "d":
        if count == 1:
            return str(dt.day)
        if count == 2:
            return f"{dt.day:02d}"
        name = _DAYS[dt.weekday()]
        return name[:3] if count == 3 else name
    if ch in "fF":
        if count > 7:
            raise format_error("Input string was not in a correct format.")
        digits = f"{dt.microsecond:06d}0"[:count]
        if ch == "F":
            digits = digits.rstrip("0")
        return digits
    if ch == "g":
        return "A.D."
    if ch == "h":
        hour = dt.hour % 12 or 12
        return str(hour) if count == 1 else f"{hour:02d}"
    if ch == "H":
        return str(dt.hour) if count == 1 else f"{dt.hour:02d}"
    if ch == "K":
        return ("", "Z", "+00:00")[value.kind]
    if ch == "m":
        return str(dt.minute) if count == 1 else f"{dt.minute:02d}"
    if ch == "M":
        if count == 1:
            return str(dt.month)
        if count == 2:
            return f"{dt.month:02d}"
        name = _MONTHS[dt.month - 1]
        return name[:3] if count == 3 else name
    if ch == "s":
        return str(dt.second) if count == 1 else f"{dt.second:02d}"
    if ch == "t":
        marker = "AM" if dt.hour < 12 else "PM"
        return marker[0] if count == 1 else marker
    if ch == "y":
        if count == 1:
            return str(dt.year % 100)
        if count == 2:
            return f"{dt.year % 100:02d}"
        return str(dt.year).rjust(count, "0")
    if ch == "z":
        return ("+0", "+00", "+00:00")[min(count, 3) - 1]
    return run  # pragma: no cover


_ISO = re.compile(
    r"\s*(\d{4})-(\d{1,2})-(\d{1,2})"
    r"(?:[T ](\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,7}))?)?)?"
    r"\s*(Z|[+-]\d{2}(?::?\d{2})?)?\s*", re.IGNORECASE)
_US = re.compile(
    r"\s*(\d{1,2})/(\d{1,2})/(\d{4})"
    r"(?:\s+(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,7}))?)?\s*(AM|PM)?)?\s*", re.IGNORECASE)
_RFC1123 = re.compile(
    r"\s*(?:[A-Za-z]{3},\s*)?(\d{1,2})\s+([A-Za-z]{3})\s+(\d{4})"
    r"(?:\s+(\d{1,2}):(\d{2})(?::(\d{2}))?)?\s*(GMT|UTC|Z)?\s*", re.IGNORECASE)
_MONTH_ABBR = {name[:3].lower(): index + 1 for index, name in enumerate(_MONTHS)}


def parse_datetime(text: str) -> v.DateTime:
    """``DateTime.Parse(text)`` for ISO 8601, RFC 1123 and ``MM/dd/yyyy [HH:mm[:ss]]``.

    A zone designator converts the time to local time (= UTC) with kind Local, as .NET does.
    """
    if text is None:
        raise ExpressionRuntimeError("Value cannot be null. (Parameter 's')",
                                     "ArgumentNullException")
    try:
        match = _ISO.fullmatch(text)
        if match:
            year, month, day, hour, minute, second, fraction, zone = match.groups()
            dt = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0),
                          int(second or 0), int((fraction or "0").ljust(7, "0")[:6]))
            return _apply_zone(dt, zone)
        match = _US.fullmatch(text)
        if match:
            month, day, year, hour, minute, second, fraction, marker = match.groups()
            hour_value = int(hour or 0)
            if marker:
                if not 1 <= hour_value <= 12:
                    raise ValueError
                hour_value = hour_value % 12 + (12 if marker.upper() == "PM" else 0)
            dt = datetime(int(year), int(month), int(day), hour_value, int(minute or 0),
                          int(second or 0), int((fraction or "0").ljust(7, "0")[:6]))
            return v.DateTime(dt, v.UNSPECIFIED)
        match = _RFC1123.fullmatch(text)
        if match:
            day, month_name, year, hour, minute, second, zone = match.groups()
            month = _MONTH_ABBR.get(month_name.lower())
            if month is None:
                raise ValueError
            dt = datetime(int(year), month, int(day), int(hour or 0), int(minute or 0),
                          int(second or 0))
            return v.DateTime(dt, v.LOCAL if zone else v.UNSPECIFIED)
    except (ValueError, OverflowError):
        pass
    raise format_error(f"String '{text}' was not recognized as a valid DateTime.")


def _apply_zone(dt: datetime, zone: str | None) -> v.DateTime:
    if zone is None:
        return v.DateTime(dt, v.UNSPECIFIED)
    if zone.upper() == "Z":
        return v.DateTime(dt, v.LOCAL)
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:].replace(":", "")
    offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
    aware = dt.replace(tzinfo=timezone(sign * offset))
    return v.DateTime(aware.astimezone(UTC).replace(tzinfo=None), v.LOCAL)


# -- TimeSpan --------------------------------------------------------------------------------


def timespan_ticks(span: timedelta) -> int:
    return span // _TICK * 10


def _timespan_parts(span: timedelta) -> tuple[str, int, int, int, int, int]:
    """(sign, days, hours, minutes, seconds, ticks-in-second) with truncation toward zero."""
    ticks = timespan_ticks(span)
    sign = "-" if ticks < 0 else ""
    ticks = abs(ticks)
    seconds, fraction = divmod(ticks, 10_000_000)
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    return sign, days, hour, minute, second, fraction


def format_timespan(span: timedelta, fmt: str | None) -> str:
    """``TimeSpan.ToString(fmt)``: "c" (default), "g", "G" and custom formats."""
    sign, days, hours, minutes, seconds, fraction = _timespan_parts(span)
    if not fmt or fmt in ("c", "t", "T"):
        text = f"{sign}{str(days) + '.' if days else ''}{hours:02d}:{minutes:02d}:{seconds:02d}"
        return text + (f".{fraction:07d}" if fraction else "")
    if fmt == "g":
        text = f"{sign}{str(days) + ':' if days else ''}{hours}:{minutes:02d}:{seconds:02d}"
        return text + (f".{fraction:07d}".rstrip("0") if fraction else "")
    if fmt == "G":
        return f"{sign}{days}:{hours:02d}:{minutes:02d}:{seconds:02d}.{fraction:07d}"
    if len(fmt) == 1:
        raise format_error("Input string was not in a correct format.")
    out: list[str] = []
    index = 0
    while index < len(fmt):
        ch = fmt[index]
        if ch in "'\"":
            end = fmt.find(ch, index + 1)
            if end < 0:
                raise format_error("Input string was not in a correct format.")
            out.append(fmt[index + 1:end])
            index = end + 1
            continue
        if ch == "\\" and index + 1 < len(fmt):
            out.append(fmt[index + 1])
            index += 2
            continue
        if ch == "%":
            index += 1
            continue
        run_end = index
        while run_end < len(fmt) and fmt[run_end] == ch:
            run_end += 1
        count = run_end - index
        if ch == "d":
            out.append(str(days).rjust(count, "0"))
        elif ch in "hms":
            number = {"h": hours, "m": minutes, "s": seconds}[ch]
            out.append(str(number) if count == 1 else f"{number:02d}")
        elif ch in "fF" and count <= 7:
            digits = f"{fraction:07d}"[:count]
            out.append(digits.rstrip("0") if ch == "F" else digits)
        else:
            raise format_error("Input string was not in a correct format.")
        index = run_end
    return "".join(out)


_TIMESPAN = re.compile(r"\s*(-)?(?:(\d{1,8})\.)?(\d{1,2}):(\d{1,2})"
                       r"(?::(\d{1,2})(?:\.(\d{1,7}))?)?\s*")


def parse_timespan(text: str) -> timedelta:
    """``TimeSpan.Parse``: ``[-][d.]hh:mm[:ss[.fffffff]]`` or a number of days."""
    if text is None:
        raise ExpressionRuntimeError("Value cannot be null. (Parameter 'input')",
                                     "ArgumentNullException")
    stripped = text.strip()
    if re.fullmatch(r"-?\d{1,9}", stripped):
        try:
            return timedelta(days=int(stripped))
        except OverflowError:
            raise ExpressionRuntimeError("The TimeSpan string '" + text + "' could not be "
                                         "parsed because at least one of the numeric "
                                         "components is out of range or contains too many "
                                         "digits.", "OverflowException") from None
    match = _TIMESPAN.fullmatch(text)
    if match:
        negative, days, hours, minutes, seconds, fraction = match.groups()
        if int(hours) < 24 and int(minutes) < 60 and int(seconds or 0) < 60:
            span = timedelta(days=int(days or 0), hours=int(hours), minutes=int(minutes),
                             seconds=int(seconds or 0),
                             microseconds=int((fraction or "0").ljust(7, "0")[:6]))
            return -span if negative else span
    raise format_error("String '" + text + "' was not recognized as a valid TimeSpan.")


# -- any value, string.Format -----------------------------------------------------------------


def format_value(value: object, fmt: str | None) -> str:
    """``value.ToString(fmt)`` for formattable types; other values ignore the format."""
    if value is None:
        return ""
    if not fmt:
        return to_string(value)
    vt = type(value)
    if vt is int or vt is float:
        return format_number(value, fmt)  # type: ignore[arg-type]
    if vt is v.DateTime:
        return format_datetime(value, fmt)  # type: ignore[arg-type]
    if vt is timedelta:
        return format_timespan(value, fmt)  # type: ignore[arg-type]
    if vt is v.Guid:
        return format_guid(value, fmt)  # type: ignore[arg-type]
    if vt is v.EnumValue:
        if fmt.upper() == "D":
            return str(value.value)  # type: ignore[attr-defined]
        return value.name  # type: ignore[attr-defined]
    return to_string(value)


def format_guid(guid: v.Guid, fmt: str | None) -> str:
    text = guid.text
    if not re.fullmatch(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                        r"[0-9a-fA-F]{12}", text):
        return text
    if not fmt or fmt in ("D", "d"):
        return text
    if fmt in ("N", "n"):
        return text.replace("-", "")
    if fmt in ("B", "b"):
        return "{" + text + "}"
    if fmt in ("P", "p"):
        return "(" + text + ")"
    raise format_error("Format string can be only \"D\", \"d\", \"N\", \"n\", \"P\", \"p\", "
                       "\"B\", \"b\", \"X\" or \"x\".")


def align(text: str, alignment: int | None) -> str:
    if not alignment:
        return text
    return text.rjust(alignment) if alignment > 0 else text.ljust(-alignment)


_ITEM = re.compile(r"\{(\d+)\s*(?:,\s*(-?\d+)\s*)?(?::([^{}]*))?\}")


def composite_format(fmt: str, args: list) -> str:
    """``string.Format(fmt, args)``."""
    if fmt is None:
        raise ExpressionRuntimeError("Value cannot be null. (Parameter 'format')",
                                     "ArgumentNullException")
    out: list[str] = []
    index = 0
    while index < len(fmt):
        ch = fmt[index]
        if ch == "{":
            if fmt.startswith("{{", index):
                out.append("{")
                index += 2
                continue
            match = _ITEM.match(fmt, index)
            if match is None:
                raise format_error()
            number = int(match.group(1))
            if number >= len(args):
                raise format_error("Index (zero based) must be greater than or equal to zero "
                                   "and less than the size of the argument list.")
            alignment = int(match.group(2)) if match.group(2) else None
            if alignment is not None and abs(alignment) > 1_000_000:
                raise format_error()
            out.append(align(format_value(args[number], match.group(3)), alignment))
            index = match.end()
            continue
        if ch == "}":
            if fmt.startswith("}}", index):
                out.append("}")
                index += 2
                continue
            raise format_error()
        out.append(ch)
        index += 1
    return "".join(out)
