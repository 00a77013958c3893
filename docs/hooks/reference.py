"""MkDocs hook: adds ``reference/config.md``, rendered from the config dataclasses of THIS
checkout (``src/``) at build time by :func:`isdm.config.reference.render_reference`."""

from __future__ import annotations

import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def on_files(files, config):
    """MkDocs' on_files event: append the generated page to the site's files."""
    from mkdocs.structure.files import File

    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))  # the tree of this checkout, not another installed isdm
    from isdm.config.reference import render_reference

    files.append(File.generated(config, "reference/config.md", content=render_reference()))
    return files
