"""uniskel: unified-skeleton multi-teacher pose distillation (the `uni` command).

The repository root is this package: `cli.py`, `pipeline/`, `stores/` and `student/` install as
`uniskel.cli`, `uniskel.pipeline`, … so nothing uni installs is a bare top-level name.
"""

__version__ = "0.1.0"
