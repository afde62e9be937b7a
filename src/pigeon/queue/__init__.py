"""The store-and-forward queue (RFC 5321 §4.5.4): enqueue, durable spool, scheduler, DSNs.

Every message enters Pigeon through :meth:`QueueService.enqueue`; ``250`` is sent only
after the spool file and the index row are on stable storage. The scheduler retries
deferred recipients with exponential backoff until ``max_lifetime``, and the DSN module
reports failures, delays and (on request) successes to the reverse-path.

Public names are imported lazily so that ``pigeon.queue.model`` stays cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pigeon.queue.ids import new_queue_id
    from pigeon.queue.scheduler import RetryPolicy
    from pigeon.queue.service import QueueBusyError, QueueService, RecoveryReport, SpoolWriter

__all__ = [
    "QueueBusyError",
    "QueueService",
    "RecoveryReport",
    "RetryPolicy",
    "SpoolWriter",
    "new_queue_id",
]

_WHERE = {
    "QueueBusyError": "pigeon.queue.service",
    "QueueService": "pigeon.queue.service",
    "RecoveryReport": "pigeon.queue.service",
    "SpoolWriter": "pigeon.queue.service",
    "RetryPolicy": "pigeon.queue.scheduler",
    "new_queue_id": "pigeon.queue.ids",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'pigeon.queue' has no attribute {name!r}")
