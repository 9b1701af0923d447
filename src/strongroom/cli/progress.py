"""Progress on a terminal: one line on stderr, redrawn at most a few times a second."""

from __future__ import annotations

import sys
import threading
import time

from strongroom.cli.context import App


class BackupProgressLine:
    def __init__(self, app: App) -> None:
        self.enabled = app.show_progress
        self._lock = threading.Lock()
        self._files = 0
        self._bytes = 0
        self._last = 0.0

    def file_done(self, path: bytes, size: int, read: bool) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._files += 1
            self._bytes += size
            now = time.monotonic()
            if now - self._last < 0.2:
                return
            self._last = now
            sys.stderr.write(f"\r{self._files} files, {self._bytes / 2**20:.1f} MiB   ")
            sys.stderr.flush()

    def warning(self, path: bytes, message: str) -> None:
        pass

    def close(self) -> None:
        if self.enabled and self._files:
            sys.stderr.write("\r" + " " * 60 + "\r")
            sys.stderr.flush()
