"""Storage URLs as they are shown and as they are connected to: every credential a
SQLAlchemy URL can hold masked (:func:`mask_url`), scrubbed from driver messages
(:func:`scrub`), and a SQLite URI made to mean what it says (:func:`connect_url`).

The one place that knows where a URL keeps secrets: the password of ``user:password@``
(an unencoded ``@`` in it included: SQLAlchemy then reads the rest as the host), and
query parameters such as ``password``, ``sslpassword`` or ``passfile``.  Everything else
is shown as typed (``sqlite:///:memory:`` stays readable).

Example:
    >>> mask_url("postgresql+psycopg://slim@db/studies?password=S3cret")
    'postgresql+psycopg://slim@db/studies?password=***'
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, unquote

#: What a masked credential reads as.
MASK = "***"
#: Query parameters whose value is a credential (or says where one is): matched
#: case-insensitively against the parameter's name.
SECRET_QUERY = re.compile(r"pass|pwd|secret|token|credential|auth|(^|_|ssl)key$|^key", re.IGNORECASE)
_SCHEME = re.compile(r"^(?P<scheme>[\w+]+://)(?P<rest>.*)$", re.DOTALL)
# SQLAlchemy's own reading: username `[^:/]*`, password `[^@]*` up to the first '@',
# then the host up to '/' or '?'; a host holding '@' means an unencoded '@' in the password.
_USERINFO = re.compile(r"^(?P<user>[^:/@?]*):(?P<password>[^@]*)@(?P<host>[^/?]*)")


def _text(url: Any) -> str:
    render = getattr(url, "render_as_string", None)
    return render(hide_password=False) if render is not None else str(url)


def _split_userinfo(rest: str) -> tuple[str, str, str] | None:
    """``(user, password, host)`` as typed, the password running to the host's last '@'."""
    m = _USERINFO.match(rest)
    if m is None:
        return None
    password, host = m["password"], m["host"]
    if "@" in host:
        head, _, host = host.rpartition("@")
        password = f"{password}@{head}"
    return m["user"], password, host


def _query_start(rest: str, after: int) -> int:
    i = rest.find("?", after)
    return len(rest) if i < 0 else i


def mask_url(url: Any) -> str:
    """``url`` (a string or a SQLAlchemy ``URL``) with every credential shown as ``***``."""
    text = _text(url)
    m = _SCHEME.match(text)
    if m is None:  # not a URL: hide whatever could be user:password@
        return re.sub(r"[^\s/@]*:[^\s@]*@", f"{MASK}@", text) if "@" in text else text
    scheme, rest = m["scheme"], m["rest"]
    after = 0
    parts = _split_userinfo(rest)
    if parts is not None:
        user, password, host = parts
        masked = f"{user}:{MASK}@{host}"
        after = len(user) + 1 + len(password) + 1 + len(host)
        rest = masked + rest[after:]
        after = len(masked)
    q = _query_start(rest, after)
    if q < len(rest):
        items = []
        for item in rest[q + 1:].split("&"):
            key, sep, value = item.partition("=")
            items.append(f"{key}={MASK}" if sep and value and SECRET_QUERY.search(unquote(key)) else item)
        rest = rest[:q + 1] + "&".join(items)
    return scheme + rest


def url_secrets(url: Any) -> list[str]:
    """The credentials ``url`` holds, as typed and decoded, longest first (empty: none)."""
    text = _text(url)
    m = _SCHEME.match(text)
    if m is None:
        return []
    rest = m["rest"]
    found: set[str] = set()
    parts = _split_userinfo(rest)
    after = 0
    if parts is not None:
        user, password, host = parts
        after = len(user) + len(password) + len(host) + 2
        if password:
            found.update({password, unquote(password)})
            pieces = password.split("@")  # a driver splits at the first '@': each side is shown apart
            found.update("@".join(pieces[:i]) for i in range(1, len(pieces)))
            found.update("@".join(pieces[i:]) for i in range(1, len(pieces)))
    q = _query_start(rest, after)
    for item in rest[q + 1:].split("&") if q < len(rest) else ():
        key, sep, value = item.partition("=")
        if sep and value and SECRET_QUERY.search(unquote(key)):
            found.update({value, unquote(value), unquote(value.replace("+", " "))})
    found |= {quote(s, safe="") for s in list(found)}
    return sorted((s for s in found if len(s) >= 1), key=len, reverse=True)


def has_credentials(url: Any) -> bool:
    """Whether ``url`` holds a password or another credential."""
    return bool(url_secrets(url))


def scrub(message: str, url: Any) -> str:
    """``message`` (a driver's error text) with every credential of ``url`` replaced by ``***``."""
    for secret in url_secrets(url):
        if len(secret) >= 2 or not secret.isalnum():
            message = message.replace(secret, MASK)
        else:  # a one-character password: only where the URL itself is quoted
            message = message.replace(f":{secret}@", f":{MASK}@")
    return message


def connect_url(url: str) -> str:
    """The URL to connect to: ``url``, except a SQLite URL asking for a URI
    (``?uri=true``) whose database is a plain path, which SQLite would otherwise open
    as a file literally named ``path?mode=ro`` (creating it): ``file:`` is added."""
    if not url.startswith("sqlite") or "uri=" not in url:
        return url
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - a bad URL is reported where it is parsed
        return url
    if str(parsed.query.get("uri", "")).lower() not in ("true", "1", "yes") or not parsed.database:
        return url
    if parsed.database.startswith("file:"):
        return url
    head, sep, tail = url.partition(":///")
    return f"{head}{sep}file:{tail}" if sep else url
