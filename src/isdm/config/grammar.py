"""Rules for values written in a small grammar, checked at load so that a typo fails there."""

from __future__ import annotations

from isdm.config.checks import Rule

__all__ = ["PROTOCOL"]


def _protocol_code(value: str) -> bool:
    """The grammar of isdm.evaluation.protocols.parse_protocol: mix | share Q | pretrain P."""
    parts = value.split()
    if parts == ["mix"]:
        return True
    if len(parts) != 2 or parts[0] not in ("share", "pretrain"):
        return False
    try:
        return 0 < float(parts[1]) < 1
    except ValueError:
        return False


PROTOCOL = Rule(_protocol_code, "must be 'mix', 'share Q' or 'pretrain P' with Q, P in (0, 1), "
                                "e.g. 'pretrain 0.5'")
