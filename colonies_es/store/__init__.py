"""The JetStream event store: an eventsourcing persistence module.

Use it with ``PERSISTENCE_MODULE=colonies_es.store`` (see
:mod:`colonies_es.store.recorders` for the environment it reads).
"""

from colonies_es.store.jetstream import StreamConfigurationError
from colonies_es.store.recorders import (
    JetStreamAggregateRecorder,
    JetStreamApplicationRecorder,
    JetStreamFactory,
    JetStreamProcessRecorder,
    JetStreamTrackingRecorder,
)

__all__ = [
    "JetStreamAggregateRecorder",
    "JetStreamApplicationRecorder",
    "JetStreamFactory",
    "JetStreamProcessRecorder",
    "JetStreamTrackingRecorder",
    "StreamConfigurationError",
]
