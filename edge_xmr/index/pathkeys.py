"""How the index names files: one text key per file, whatever bytes its name holds, whatever path led to it.

File names are bytes on POSIX and UTF-16 on Windows; Python hands names that are not valid Unicode
over as ``str`` holding lone surrogates (``os.fsdecode``'s surrogateescape on POSIX: byte 0xFF is
U+DCFF; unpaired surrogates on Windows). SQLite text must be valid UTF-8, and such a ``str`` cannot
be printed to a UTF-8 terminal either. The index therefore stores a *key*:

- the resolved path (``os.path.realpath``: a symlinked folder, ``..`` or a second spelling of the
  same path give one key), and
- written in valid Unicode: each surrogate becomes U+FFFD followed by its byte in two hex digits
  (U+DC80..U+DCFF, the undecodable bytes of a POSIX name) or by ``u`` and four hex digits (any other
  surrogate); a literal U+FFFD is doubled. The mapping is one to one and character by character, so
  a folder's key is a prefix of its photos' keys and ``fs_path`` gives the exact OS path back.

A path that is valid Unicode and holds no U+FFFD (nearly every path) is its own key.
"""

from __future__ import annotations

import os

ESCAPE = "\ufffd"
_HEX = frozenset("0123456789ABCDEF")


def path_key(path: str) -> str:
    """An OS path (``str`` as ``os`` returns it) -> its index key (valid Unicode, printable)."""
    if path.isascii() or (ESCAPE not in path and _is_unicode(path)):
        return path
    out = []
    for ch in path:
        cp = ord(ch)
        if ch == ESCAPE:
            out.append(ESCAPE + ESCAPE)
        elif 0xDC80 <= cp <= 0xDCFF:
            out.append(f"{ESCAPE}{cp - 0xDC00:02X}")
        elif 0xD800 <= cp <= 0xDFFF:
            out.append(f"{ESCAPE}u{cp:04X}")
        else:
            out.append(ch)
    return "".join(out)


def fs_path(key: str) -> str:
    """An index key -> the OS path it names (what ``open`` and ``os.stat`` take)."""
    if ESCAPE not in key:
        return key
    out, i, n = [], 0, len(key)
    while i < n:
        ch = key[i]
        if ch != ESCAPE:
            out.append(ch)
            i += 1
        elif key[i + 1:i + 2] == ESCAPE:
            out.append(ESCAPE)
            i += 2
        elif key[i + 1:i + 2] == "u" and _is_hex(key[i + 2:i + 6], 4):
            out.append(chr(int(key[i + 2:i + 6], 16)))
            i += 6
        elif _is_hex(key[i + 1:i + 3], 2) and int(key[i + 1:i + 3], 16) >= 0x80:
            out.append(chr(0xDC00 + int(key[i + 1:i + 3], 16)))
            i += 3
        else:  # not an escape this module writes (an index from before keys): the character itself
            out.append(ch)
            i += 1
    return "".join(out)


def resolve(path: str | os.PathLike[str]) -> str:
    """``~`` expanded, absolute, symlinks resolved (a missing tail is kept as given)."""
    return os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


def lookup_keys(path: str | os.PathLike[str]) -> list[str]:
    """The keys under which the index may hold ``path``, most likely first: the resolved path's key,
    the unresolved path's (rows indexed before paths were resolved), and the path taken as a key
    itself (a path as the library printed it, e.g. copied from ``search`` output)."""
    given = os.path.abspath(os.path.expanduser(os.fspath(path)))
    keys = [path_key(resolve(given)), path_key(given)]
    if _is_unicode(given):
        keys.append(given)
    return list(dict.fromkeys(keys))


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_hex(text: str, n: int) -> bool:
    return len(text) == n and all(c in _HEX for c in text)
