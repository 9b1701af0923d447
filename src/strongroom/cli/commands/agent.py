"""`strongroom agent`: the client side, spoken over stdin/stdout (started over SSH)."""

from __future__ import annotations

import click


@click.command("agent")
def agent_command() -> int:
    """Serve one director over stdin/stdout; not for interactive use."""
    from strongroom.agent.client import main

    return main()
