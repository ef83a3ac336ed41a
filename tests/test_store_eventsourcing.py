"""The JetStream store passes eventsourcing's own recorder and application test cases.

Each test gets its own stream (and subject prefix) on the session's real nats-server, so
notification ids start at 1 as the library's tests expect.
"""

from __future__ import annotations

import os
import uuid
from typing import ClassVar

import pytest
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    ProcessRecorder,
    TrackingRecorder,
)

# Imported as modules: pytest would otherwise collect the abstract base classes too.
from eventsourcing.tests import application as es_application
from eventsourcing.tests import persistence as es_persistence
from eventsourcing.utils import Environment, get_topic

from colonies_es.store import (
    JetStreamAggregateRecorder,
    JetStreamApplicationRecorder,
    JetStreamFactory,
    JetStreamProcessRecorder,
    JetStreamTrackingRecorder,
)


@pytest.fixture(autouse=True, scope="class")
def _nats_url_on_class(request: pytest.FixtureRequest, nats_url: str) -> None:
    """unittest-style classes cannot take fixtures as arguments: hand them the URL."""
    if request.cls is not None:
        request.cls.nats_url = nats_url


def fresh_env(nats_url: str) -> dict[str, str]:
    """Settings for a new, empty stream of the session's server."""
    tag = uuid.uuid4().hex[:12]
    return {
        "PERSISTENCE_MODULE": "colonies_es.store",
        "NATS_URL": nats_url,
        "JETSTREAM_STREAM": f"TEST_{tag}",
        "JETSTREAM_SUBJECT_PREFIX": f"t{tag}",
    }


class JetStreamCase:
    """Builds recorders on a fresh stream per test and closes their connections."""

    nats_url: ClassVar[str]
    factories: list[JetStreamFactory]

    def setUp(self) -> None:
        self.factories = []
        super().setUp()  # type: ignore[misc]

    def tearDown(self) -> None:
        super().tearDown()  # type: ignore[misc]
        for factory in self.factories:
            factory.close()

    def new_factory(self) -> JetStreamFactory:
        factory = JetStreamFactory(fresh_env(self.nats_url))
        self.factories.append(factory)
        return factory


class TestAggregateRecorder(JetStreamCase, es_persistence.AggregateRecorderTestCase):
    def create_recorder(self) -> AggregateRecorder:
        return self.new_factory().aggregate_recorder()


class TestApplicationRecorder(
    JetStreamCase, es_persistence.ApplicationRecorderTestCase[ApplicationRecorder]
):
    def create_recorder(self) -> ApplicationRecorder:
        return self.new_factory().application_recorder()

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class TestNonInterleavingNotificationIDs(
    JetStreamCase, es_persistence.NonInterleavingNotificationIDsBaseCase
):
    def create_recorder(self) -> ApplicationRecorder:
        return self.new_factory().application_recorder()


class TestTrackingRecorder(JetStreamCase, es_persistence.TrackingRecorderTestCase):
    def create_recorder(self) -> TrackingRecorder:
        return self.new_factory().tracking_recorder()


class TestProcessRecorder(JetStreamCase, es_persistence.ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        return self.new_factory().process_recorder()


class MyTrackingRecorder(JetStreamTrackingRecorder):
    """A subclass, to prove the factory builds the class it is told to."""


class TestInfrastructureFactory(es_persistence.InfrastructureFactoryTestCase[JetStreamFactory]):
    nats_url: ClassVar[str]

    def setUp(self) -> None:
        self.env = Environment("TestCase", fresh_env(self.nats_url))
        super().setUp()

    def expected_factory_class(self) -> type[JetStreamFactory]:
        return JetStreamFactory

    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        return JetStreamAggregateRecorder

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return JetStreamApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return JetStreamTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return MyTrackingRecorder

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return JetStreamProcessRecorder


class TestExampleApplication(es_application.ExampleApplicationTestCase):
    """The library's bank-account application, on JetStream, with snapshots."""

    nats_url: ClassVar[str]
    expected_factory_topic = get_topic(JetStreamFactory)

    def setUp(self) -> None:
        self.saved_environ = dict(os.environ)
        os.environ.update(fresh_env(self.nats_url))
        super().setUp()

    def tearDown(self) -> None:
        super().tearDown()
        os.environ.clear()
        os.environ.update(self.saved_environ)


def test_factory_is_found_from_the_persistence_module(nats_url: str) -> None:
    factory = InfrastructureFactory.construct(Environment(env=fresh_env(nats_url)))
    try:
        assert isinstance(factory, JetStreamFactory)
    finally:
        factory.close()
