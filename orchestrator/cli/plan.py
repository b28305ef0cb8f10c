"""``caviar plan``: panda or caviar, from one trial measured here or on a cluster."""

from __future__ import annotations


def add_plan(sub, common) -> None:
    p = sub.add_parser("plan", parents=[common], help="say panda or caviar for a sweep")
    p.set_defaults(func=lambda args: 1)
