"""Names as they are shown: the one place a file's name (an upload's name as sent, a file's name on disk) is made
safe to show, and the original kept exactly.

A sent or found name may hold characters that change how it, or the text around it, displays: NUL and the other
control characters (Unicode category Cc), the bidirectional controls (U+202A-U+202E, U+2066-U+2069, U+200E,
U+200F, U+061C: `invoice\\u202efdp.exe` displays as `invoiceexe.pdf`), the line and paragraph separators (Zl, Zp)
and lone surrogates (Cs: an undecodable byte of a file name on disk). `shown_name` writes each of them as visible
text, `\\uXXXX` (`\\u202e`, `\\u0000`), so the name shows every character it has and nothing else; everything
else is kept (accents, CJK, emoji). The catalog stores the shown name (`Video.name`, `JobFile.name`) and, when it
differs, the original percent-encoded (`encode_original`: lossless, and storable in any database, PostgreSQL
refusing NUL), given back for export by `decode_original`.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote, unquote

MAX_SHOWN_CHARS = 1024  # the catalog's name columns (String(1024))
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
_ELLIPSIS = "…"


def is_hidden(char: str) -> bool:
    """Whether a character changes how text displays instead of showing itself (see the module)."""
    return char in BIDI_CONTROLS or unicodedata.category(char) in _HIDDEN_CATEGORIES


def shown_name(raw: str, max_chars: int | None = MAX_SHOWN_CHARS) -> str:
    """`raw` as it is safe to show: each hidden character as the visible text `\\uXXXX`, at most `max_chars`
    characters (a longer one keeps its start and its end, the extension, around `…`; None: no limit). Applying
    it again changes nothing."""
    shown = "".join(f"\\u{ord(c):04x}" if is_hidden(c) else c for c in raw)
    if max_chars is None or len(shown) <= max_chars:
        return shown
    tail = max_chars // 3
    return shown[: max_chars - tail - len(_ELLIPSIS)] + _ELLIPSIS + shown[len(shown) - tail :]


def encode_original(raw: str | None) -> str | None:
    """What the catalog keeps of a name whose shown form differs from it: the name percent-encoded (None when
    the shown name is the name itself, or there is no name)."""
    if raw is None or shown_name(raw) == raw:
        return None
    return quote(raw, safe=" ", errors="surrogateescape")


def decode_original(stored: str) -> str:
    """The name exactly as it was sent or found, from `encode_original`'s text."""
    return unquote(stored, errors="surrogateescape")
