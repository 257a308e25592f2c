"""The library's exceptions share one base, :class:`EdgeXmrError`: catch it to handle every error
that edge_xmr raises on purpose (a bad file, a bad query, a model that does not fit the index, ...).

Errors that also have a natural built-in kind keep it as a second base (``BundleError`` is a
``ValueError``, ``SchemaError`` a ``RuntimeError``), so older ``except ValueError`` code still works.
The CLI turns any of them into one line on stderr and exit status 2.
"""

from __future__ import annotations


class EdgeXmrError(Exception):
    """Base of every error edge_xmr raises on purpose."""


__all__ = ["EdgeXmrError"]
