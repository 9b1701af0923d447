"""Key derivation from several threads at once (a director opening repositories for
parallel runs) must not hang: cryptography's Argon2id with lanes > 1 does, unguarded."""

from __future__ import annotations

import threading

from strongroom.repository.keys import KdfParams, _derive


def test_concurrent_key_derivations_all_finish() -> None:
    threads = [
        threading.Thread(target=_derive, args=(b"pw", bytes([i]) * 16, KdfParams()), daemon=True)
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
