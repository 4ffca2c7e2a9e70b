"""In-process change notices for IDLE (rfc/2177), keyed by folder id.

An IMAP session that APPENDs, COPYs or MOVEs into a folder publishes its id; every session
idling on that folder in this process is woken at once and reports the new messages. Changes
made elsewhere (Delivery, another process) are not published here: an idling session also polls
its folder's (UIDNEXT, HIGHESTMODSEQ) every `POLL_SECONDS`, which catches them within that
delay. Cross-process push (PostgreSQL LISTEN/NOTIFY) is left for later (docs/imap.md).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Final

POLL_SECONDS: Final = 0.5


class FolderNotifier:
    def __init__(self) -> None:
        self._waiters: defaultdict[int, set[asyncio.Event]] = defaultdict(set)

    def subscribe(self, folder_id: int, wake: asyncio.Event) -> None:
        self._waiters[folder_id].add(wake)

    def unsubscribe(self, folder_id: int, wake: asyncio.Event) -> None:
        waiters = self._waiters.get(folder_id)
        if waiters is not None:
            waiters.discard(wake)
            if not waiters:
                del self._waiters[folder_id]

    def publish(self, folder_id: int) -> None:
        for wake in self._waiters.get(folder_id, ()):
            wake.set()

    def __len__(self) -> int:
        return sum(len(w) for w in self._waiters.values())
