"""What one DICOM worker process lets its peers hold: association slots and the memory of
data sets being received.

The memory of a worker is bounded by ``max_associations x max_pdu_size`` (one PDU buffer per
association) plus ``scp_memory_budget`` (the data sets being assembled, all associations
together) - not by what peers announce or send.
"""

from __future__ import annotations

import threading


class AssociationSlots:
    """At most ``limit`` associations at a time, whichever acceptor serves them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        """Take a slot; False when all are taken (the caller refuses the association)."""
        with self._lock:
            if self.active >= self.limit:
                return False
            self.active += 1
            return True

    def release(self) -> None:
        """Give a slot back."""
        with self._lock:
            self.active -= 1


class MemoryBudget:
    """Bytes of received data sets the process holds at once, shared by its associations.

    A reservation that does not fit is refused, except when nothing else is reserved: one
    object up to ``max_object_size`` is always received, alone if it must be.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, size: int) -> bool:
        """Reserve ``size`` more bytes; False (nothing reserved) when the budget is spent."""
        with self._lock:
            if self.used and self.used + size > self.limit:
                return False
            self.used += size
            return True

    def release(self, size: int) -> None:
        """Give ``size`` reserved bytes back."""
        with self._lock:
            self.used -= size
