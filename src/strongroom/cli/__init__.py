"""The command-line interface: parses, calls the engine, renders text or JSON."""
