"""MkDocs hook: the docstrings' reStructuredText roles (:func:`x`, :class:`~a.b.C`, ...) shown
as code, ``x`` and ``C`` (the ``~`` form keeps the last name, as Sphinx does)."""

import re

_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc):<code>(~?)([^<]*)</code>")


def _name(m):
    return f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>"


def on_page_content(html, **kwargs):
    return _ROLE.sub(_name, html)
