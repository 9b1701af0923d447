"""One module per command (or family of commands); each handler is short."""
