"""Database URLs (SQLAlchemy style, as Optuna and MLflow take them): a form safe to print, the
driver package a URL needs, and a bounded first connection.

- :func:`safe_url`: the URL with its password replaced by ``***`` (messages, MLflow tags,
  ``summary.json``).
- :func:`missing_driver`: ``postgresql://`` needs the Python package ``psycopg`` (SQLAlchemy 2's
  default PostgreSQL driver; ``pip install "psycopg[binary]"`` or ``pip install "isdm[postgres]"``),
  ``postgresql+psycopg2://`` needs ``psycopg2-binary``, ``mysql://`` ``mysqlclient``, ...
- :func:`engine_kwargs`: ``connect_timeout`` (:data:`CONNECT_TIMEOUT` seconds) for server
  databases, so an unreachable host fails within seconds instead of the operating system's TCP
  timeout (minutes).
- :func:`probe`: connect once and disconnect; the reason as one line, or ``None`` when it worked.
- :func:`problem`: all of it as one sentence with the fix (driver, dialect, connection), or
  ``None`` when the database answers.

SQLite URLs need no driver package, no timeout and no probe (a file, not a server).
"""

from __future__ import annotations

import importlib.util
from typing import Any, Optional

__all__ = ["safe_url", "is_server_url", "missing_driver", "engine_kwargs", "probe", "problem",
           "CONNECT_TIMEOUT"]

CONNECT_TIMEOUT = 10  # seconds a database server may take to accept a connection

# dialect[+driver] -> (module SQLAlchemy imports, pip package that provides it)
_DRIVERS = {
    "postgresql": ("psycopg", '"psycopg[binary]"'),
    "postgresql+psycopg": ("psycopg", '"psycopg[binary]"'),
    "postgresql+psycopg2": ("psycopg2", "psycopg2-binary"),
    "postgresql+pg8000": ("pg8000", "pg8000"),
    "mysql": ("MySQLdb", "mysqlclient"),
    "mysql+mysqldb": ("MySQLdb", "mysqlclient"),
    "mysql+pymysql": ("pymysql", "PyMySQL"),
    "mariadb": ("MySQLdb", "mysqlclient"),
    "mssql+pyodbc": ("pyodbc", "pyodbc"),
}


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower()


def is_server_url(url: str) -> bool:
    """A URL of a database server (not SQLite, not a file path)."""
    return "://" in url and not _scheme(url).startswith("sqlite")


def safe_url(url: str) -> str:
    """``url`` with the password hidden: ``postgresql://me:***@db/optuna``."""
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: hide everything between '//' and '@'
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}" if "@" in rest else url


def missing_driver(url: str) -> Optional[str]:
    """The pip package to install for the database driver ``url`` needs, or ``None`` when it is
    importable (or the dialect is not one this module knows)."""
    module, package = _DRIVERS.get(_scheme(url), (None, None))
    if module is None:
        return None
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module blocked in sys.modules has no spec
        found = False
    return None if found else package


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy ``create_engine`` keyword arguments: a bounded connect for server databases."""
    if not is_server_url(url):
        return {}
    if _scheme(url).startswith("mssql"):
        return {"connect_args": {"timeout": CONNECT_TIMEOUT}}
    return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT}}


def probe(url: str) -> Optional[str]:
    """Connect to ``url`` once (at most :data:`CONNECT_TIMEOUT` seconds); ``None`` when it
    worked, else the driver's reason in one line."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, **engine_kwargs(url))
    except Exception as e:  # unknown dialect, malformed URL
        return f"{type(e).__name__}: {_first_line(e)}"
    try:
        with engine.connect():
            return None
    except Exception as e:
        return _first_line(getattr(e, "orig", None) or e)
    finally:
        engine.dispose()


def problem(url: str) -> Optional[str]:
    """What keeps ``url`` (a server URL) from working, with the fix, or ``None`` if it answers."""
    package = missing_driver(url)
    if package:
        extra = ' (or `pip install "isdm[postgres]"`)' if package.startswith('"psycopg') else ""
        return f"its database driver is not installed: `pip install {package}`{extra}"
    scheme = _scheme(url)
    if scheme in ("postgres", "postgres+psycopg", "postgres+psycopg2"):
        return f"SQLAlchemy calls PostgreSQL postgresql://, not {scheme}://"
    reason = probe(url)
    if reason is None:
        return None
    if reason.startswith(("NoSuchModuleError", "ArgumentError")):
        return f"not a database URL SQLAlchemy knows ({reason})"
    return (f"cannot connect within {CONNECT_TIMEOUT} s ({reason}): check that the database "
            "server runs and this machine reaches it, the user and password, and that the "
            "database exists")


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]
