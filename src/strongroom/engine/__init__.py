"""The engine: archiver, restorer and checker. Never prints, never reads the clock itself."""
