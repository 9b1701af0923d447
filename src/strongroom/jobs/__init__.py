"""Jobs: turns config and catalog state into runs (locks, backup, catalog records)."""
