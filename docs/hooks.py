"""MkDocs hooks: offline mathematics, and the docstrings' roles shown as code.

Mathematics. MathJax 3 (the ``mathjax`` package of the ``docs`` extra, PyPI
``django-static-mathjax``: MathJax's own ``es5`` build inside a wheel) is copied into the site as
``assets/mathjax/``, so the pages render TeX without a network. ``javascripts/mathjax.js``
configures it for ``$…$``, ``\\(…\\)``, ``$$…$$`` and ``\\[…\\]`` on every page: Markdown pages
(``pymdownx.arithmatex``), API pages (docstrings go through the same Markdown) and notebook pages.
The notebook pages' own MathJax 2 block (a ``<script>`` whose source is empty unless a CDN is
named) is removed, so only the site's MathJax runs there.

Roles. The docstrings' reStructuredText roles (:func:`x`, :class:`~a.b.C`, ...) are shown as
code, ``x`` and ``C`` (the ``~`` form keeps the last name, as Sphinx does).
"""

import re
from pathlib import Path

from mkdocs.structure.files import File

MATHJAX_DIR = "assets/mathjax"

_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc):<code>(~?)([^<]*)</code>")
# nbconvert's base/mathjax.html.j2: the loader script and its MathJax-2 configuration.
_NB_MATHJAX = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S)


def mathjax_source() -> Path:
    """The ``es5`` folder of the installed MathJax (``tex-chtml.js``, its fonts and extensions)."""
    try:
        import mathjax
    except ImportError as e:
        raise ImportError("the documentation renders its mathematics with MathJax from the "
                          "'mathjax' package: pip install -e '.[docs]'") from e
    return Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"


def _name(m):
    return f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>"


def on_files(files, config, **kwargs):
    """Add MathJax's files to the site, under ``assets/mathjax/``."""
    root = mathjax_source()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        uri = f"{MATHJAX_DIR}/{path.relative_to(root).as_posix()}"
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_content(html, **kwargs):
    return _ROLE.sub(_name, _NB_MATHJAX.sub("", html))
