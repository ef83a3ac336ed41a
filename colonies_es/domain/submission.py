"""Checking a submitted workflow and laying out its graph.

:func:`plan_workflow` applies SEMANTICS.md, "Submitting a workflow": it refuses, with a
BadRequest that says which spec is wrong and why, a workflow that has no specs, a spec
whose nodename is empty, a nodename used twice, a spec for another colony or with no
executor type, a dependency that names no node (or the same node twice), and
dependencies that form a cycle. Otherwise it returns one :class:`PlannedNode` per spec,
in the workflow's order, with its parents (the nodes it depends on, in the order of its
dependencies) and children (the nodes depending on it, in workflow order).

Whether the colony exists and the submitter is a member is the engine's business.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from colonies_es.domain.base import check_name
from colonies_es.domain.errors import BadRequest
from colonies_es.models import FuncSpec, Workflow, to_dict

__all__ = ["PlannedNode", "check_spec", "plan_workflow"]


@dataclass(frozen=True)
class PlannedNode:
    """One function of a checked workflow, placed in its graph."""

    nodename: str
    spec: dict[str, Any]
    """The spec as plain data (``models.to_dict``), its ``nodename`` filled in."""
    parents: list[str]
    """Nodenames it waits for, in the order of its dependencies."""
    children: list[str]
    """Nodenames waiting for it, in the order of the workflow."""


def plan_workflow(colonyname: str, workflow: Workflow) -> list[PlannedNode]:
    """The nodes of ``workflow``, to submit to colony ``colonyname``.

    Raises BadRequest, with a message naming the offending spec, when the workflow is
    not one SEMANTICS.md accepts. Nothing of ``workflow`` is shared with the result.
    """
    check_name(colonyname, "colony name")
    if workflow.colonyname != colonyname:
        raise BadRequest(f"the workflow is for colony {workflow.colonyname!r}, not {colonyname!r}")
    if not workflow.functionspecs:
        raise BadRequest("the workflow has no functionspecs")

    nodenames = [
        check_spec(colonyname, spec, f"functionspecs[{index}]")
        for index, spec in enumerate(workflow.functionspecs)
    ]
    dependencies: dict[str, list[str]] = {}
    for index, (nodename, spec) in enumerate(zip(nodenames, workflow.functionspecs, strict=True)):
        if nodename in dependencies:
            first = nodenames.index(nodename)
            raise BadRequest(
                f"nodename {nodename!r} is used twice "
                f"(functionspecs[{first}] and functionspecs[{index}])"
            )
        dependencies[nodename] = list(spec.conditions.dependencies)
    _check_dependencies(dependencies)

    children: dict[str, list[str]] = {nodename: [] for nodename in nodenames}
    for nodename, parents in dependencies.items():
        for parent in parents:
            children[parent].append(nodename)

    planned = []
    for nodename, spec in zip(nodenames, workflow.functionspecs, strict=True):
        spec_data = to_dict(spec)
        spec_data["nodename"] = nodename
        planned.append(
            PlannedNode(
                nodename=nodename,
                spec=spec_data,
                parents=dependencies[nodename],
                children=children[nodename],
            )
        )
    return planned


def check_spec(colonyname: str, spec: FuncSpec, where: str) -> str:
    """The spec's nodename (``funcname`` when empty), after checking the spec alone."""
    nodename = spec.nodename or spec.funcname
    if not nodename:
        raise BadRequest(f"{where}: nodename is empty (and so is funcname)")
    where = f"{where} ({nodename})"
    if not spec.funcname:
        raise BadRequest(f"{where}: funcname is empty")
    conditions = spec.conditions
    if conditions.colonyname != colonyname:
        raise BadRequest(
            f"{where}: conditions.colonyname {conditions.colonyname!r} "
            f"is not the workflow's colony {colonyname!r}"
        )
    if not conditions.executortype:
        raise BadRequest(f"{where}: conditions.executortype is empty")
    check_name(conditions.executortype, f"{where}: conditions.executortype")
    return nodename


def _check_dependencies(dependencies: Mapping[str, Sequence[str]]) -> None:
    """Refuse a dependency on no node, a repeated dependency, and cycles."""
    for nodename, parents in dependencies.items():
        for position, parent in enumerate(parents):
            if parent not in dependencies:
                raise BadRequest(
                    f"{nodename!r} depends on {parent!r}, which is no node of the workflow"
                )
            if parent in parents[:position]:
                raise BadRequest(f"{nodename!r} depends on {parent!r} twice")
    cycle = _find_cycle(dependencies)
    if cycle is not None:
        raise BadRequest(
            f"the dependencies form a cycle: {' -> '.join(cycle)} (each node depends on the next)"
        )


def _find_cycle(dependencies: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle of the dependency graph as nodenames, first one repeated at the end
    (``["a", "b", "a"]``: a depends on b, which depends on a), or None.

    Depth-first search without recursion, so a long chain cannot exhaust the stack.
    """
    done: set[str] = set()
    for start in dependencies:
        if start in done:
            continue
        path = [start]  # the nodes being explored, each depending on the next
        on_path = {start}
        pending: list[Iterator[str]] = [iter(dependencies[start])]
        while pending:
            parent = next(pending[-1], None)
            if parent is None:
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                pending.pop()
            elif parent in on_path:
                return [*path[path.index(parent) :], parent]
            elif parent not in done:
                path.append(parent)
                on_path.add(parent)
                pending.append(iter(dependencies[parent]))
    return None
