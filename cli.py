"""`uni`: one command per stage. Thin: parse options, call the module that does the work."""

from __future__ import annotations

import sys

import click

from pipeline.errors import UniError


class _Group(click.Group):
    """Turns user errors into one line on stderr and exit code 2 (no traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UniError as e:
            click.echo(f"uni: error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("uni: interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.version_option(package_name="uni")
def uni() -> None:
    """Train one human-pose student from many datasets and many teachers."""


def main() -> None:
    uni()


if __name__ == "__main__":
    main()
