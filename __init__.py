"""uniskel: unified-skeleton multi-teacher pose distillation (the `uni` command).

The repository root is this package: `cli.py`, `pipeline/`, `stores/` and `student/` install as
`uniskel.cli`, `uniskel.pipeline`, … so nothing uni installs is a bare top-level name. The version
is pyproject.toml's (`uni --version`, and every store's `software_version`).
"""
