"""`strongroom help exit-codes`."""

from __future__ import annotations

import click

from strongroom.cli.context import App, pass_app
from strongroom.errors import EXIT_CODES


@click.command("help")
@click.argument("topic", required=False)
@click.pass_context
@pass_app
def help_command(app: App, ctx: click.Context, topic: str | None) -> None:
    """Show help on a topic: exit-codes, or a command name."""
    if topic == "exit-codes":
        if app.json:
            app.emit_json({str(code): text for code, text in EXIT_CODES.items()})
            return
        for code, text in EXIT_CODES.items():
            app.result(f"{code:>4}  {text}")
        return
    parent = ctx.parent
    assert parent is not None
    group = parent.command
    assert isinstance(group, click.Group)
    if topic:
        command = group.get_command(parent, topic)
        if command is None:
            raise click.UsageError(f"no command or topic {topic!r}")
        click.echo(command.get_help(click.Context(command, info_name=topic, parent=parent)))
    else:
        click.echo(group.get_help(parent))
