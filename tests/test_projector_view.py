"""The view's own contracts, on a SQLite file alone (no NATS server)."""

from __future__ import annotations

from pathlib import Path

from colonies_es.projections.view import ViewChanges, open_view


def test_versions_of_many_aggregates_answer_as_version_of_each(tmp_path: Path) -> None:
    view = open_view(tmp_path / "view.sqlite")
    try:
        stored = [(f"c.graph.{n:064x}", n % 7 + 1) for n in range(1200)]  # > one IN (...)
        view.write(ViewChanges(versions=stored), position=1)
        absent = [f"c.graph.{n:064x}" for n in range(5000, 5300)]
        asked = [aggregate_id for aggregate_id, _ in stored] + absent

        found = view.versions_of(asked)

        assert found == dict(stored)
        assert all(
            view.version_of(aggregate_id) == found.get(aggregate_id) for aggregate_id in asked[::97]
        )
        assert view.versions_of([]) == {}
    finally:
        view.close()
