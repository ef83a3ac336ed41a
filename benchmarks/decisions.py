"""What one decision of the engine costs, piece by piece (no server, one process).

``python -m benchmarks.decisions [--rounds N]`` takes the engine's four commonest
decisions as the engine takes them, with the engine's garbage-collector thresholds, on
commands signed like a client's: a one-process submission (``submit_func_spec``), a
workflow of four (a root and three children), the claim of the root and its close. Each
decision is cut into the pieces the engine runs in order, each timed alone
(``time.perf_counter_ns``, median of the rounds after the first quarter):

- ``open (verify)``: ``crypto.open_command``, the envelope decoded and the signature
  checked (libsecp256k1: about 40 us of it);
- ``decode body``, ``audit()``: the op's arguments, the audit fields of its events;
- ``copy``: the graph copied to decide on (claims and closes);
- ``decide``: the domain's command (``ProcessGraph.submit``, ``assign``, ``close``), its
  event built and applied to the copy;
- ``encode``: the event's state encoded (``EventMapper.to_stored_event``);
- ``envelope+seal``: the envelope encoded and sealed (what ``JetStreamLog.append`` sends);
- ``remember``: the command noted for retries (``SeenCommands.remember``);
- ``install``: the copy installed in ``EngineState`` (indices, ready index, timers);
- ``reply``: the reply encoded (the process, or the graph).

What it leaves out is what a decision costs around these pieces: the request's task and
the loop's steps, nats-py's parsing and publishing, the append's acknowledgement, the
follower reading the event back (``benchmarks.critpath`` and py-spy on a running engine
show those). Run it twice with ``PYTHONPATH`` set to two source trees, in turns, to
compare them: the figures move with the machine's load as any timing does.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from colonies_es import crypto
from colonies_es.domain import AuditedEvent, ProcessGraph, graph_ids
from colonies_es.engine import GC_THRESHOLDS
from colonies_es.engine.aggregates import audit
from colonies_es.engine.replies import SeenCommands
from colonies_es.engine.state import EngineState
from colonies_es.models import Executor, Process, Workflow, encode, func_spec
from colonies_es.protocol import Claim, CloseProcess, SubmitFuncSpec, SubmitWorkflow
from colonies_es.store.codec import EventMapper, MsgspecTranscoder, Sealer, encode_envelope

NOOP = "def noop(ctx={}):\n    return None\n"
COLONY = "bench"
TYPE = "bench-type"
DECISIONS = ("submit1", "submit4", "claim", "close")


class Decisions:
    """The engine's pieces, each decision's timed into :attr:`spent`."""

    def __init__(self) -> None:
        self.user_key = crypto.new_private_key()
        self.executor_key = crypto.new_private_key()
        self.executor = Executor(
            executorname="bench-executor",
            executorid=crypto.id_from_private_key(self.executor_key),
            executortype=TYPE,
            colonyname=COLONY,
            state=1,
        )
        self.mapper = EventMapper(transcoder=MsgspecTranscoder())
        self.sealer = Sealer(b"bench seal key, 32 bytes long..")
        self.state = EngineState()
        self.seen = SeenCommands(60.0)
        self.spent: dict[str, list[int]] = defaultdict(list)
        # Trees from before process_model(shared=...) copy the reply's data.
        self._shared = "shared" in inspect.signature(ProcessGraph.process_model).parameters

    @contextmanager
    def timed(self, decision: str, piece: str) -> Iterator[None]:
        started = time.perf_counter_ns()
        yield
        self.spent[f"{decision} {piece}"].append(time.perf_counter_ns() - started)

    def process_model(self, graph: ProcessGraph, processid: str) -> Process:
        if self._shared:
            return graph.process_model(processid, shared=True)
        return graph.process_model(processid)

    def save(self, decision: str, graph: ProcessGraph, command: crypto.VerifiedCommand) -> None:
        """What ``Aggregates._save`` and ``change`` do once the draft decided."""
        events: list[AuditedEvent] = list(graph.collect_events())  # type: ignore[arg-type]
        with self.timed(decision, "encode"):
            stored = [self.mapper.to_stored_event(event) for event in events]
        with self.timed(decision, "envelope+seal"):
            for event in stored:
                encode_envelope(event, f"colonies.ev.{event.originator_id}", self.sealer)
        with self.timed(decision, "remember"):
            now = datetime.now(UTC)
            for domain_event in events:
                self.seen.remember(domain_event, 1, now, command)
        with self.timed(decision, "install"):
            self.state.install(graph, events, 1)

    def opened(self, decision: str, op: str, body: object, key: str) -> crypto.VerifiedCommand:
        data = crypto.seal(op, body, key)
        with self.timed(decision, "open (verify)"):
            return crypto.open_command(data, time.time())

    def round(self, processes: int) -> None:
        """One submission of ``processes`` processes, then the claim and close of its root."""
        decision = f"submit{processes}"
        specs = [func_spec(f"f{n}", [], COLONY, TYPE, code=NOOP) for n in range(processes)]
        for spec in specs[1:]:
            spec.conditions.dependencies.append("f0")
        now = datetime.now(UTC)
        if processes == 1:
            command = self.opened(
                decision, "submit_func_spec", SubmitFuncSpec(spec=specs[0]), self.user_key
            )
            with self.timed(decision, "decode body"):
                single = command.decode_body(SubmitFuncSpec)
            workflow = Workflow(colonyname=COLONY, functionspecs=[single.spec])
        else:
            workflow = Workflow(colonyname=COLONY, functionspecs=specs)
            command = self.opened(
                decision, "submit_workflow", SubmitWorkflow(workflow=workflow), self.user_key
            )
            with self.timed(decision, "decode body"):
                workflow = command.decode_body(SubmitWorkflow).workflow
        with self.timed(decision, "audit()"):
            fields = audit(command, now)
        with self.timed(decision, "decide"):
            graph = ProcessGraph.submit(
                COLONY,
                workflow,
                initiatorid=command.caller_id,
                initiatorname="bench",
                ids=graph_ids(command.replay_key),
                **fields,
            )
        self.save(decision, graph, command)
        with self.timed(decision, "reply"):
            if processes == 1:
                encode(self.process_model(graph, graph.rootprocessids[0]))
            else:
                encode(graph.to_model())
        root = graph.rootprocessids[0]
        claim = self.opened("claim", "claim", Claim(colonyname=COLONY), self.executor_key)
        with self.timed("claim", "copy"):
            draft = graph.copy()
        with self.timed("claim", "decide"):
            draft.assign(root, self.executor, 1, **audit(claim, now))
        self.save("claim", draft, claim)
        with self.timed("claim", "reply"):
            encode(self.process_model(draft, root))
        close = self.opened("close", "close", CloseProcess(processid=root), self.executor_key)
        with self.timed("close", "copy"):
            closing = draft.copy()
        with self.timed("close", "decide"):
            closing.close(root, close.caller_id, [], attempt=1, **audit(close, now))
        self.save("close", closing, close)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.decisions",
        description="The CPU of the engine's decisions, piece by piece (no server).",
    )
    parser.add_argument("--rounds", type=int, default=2000, help="decisions of each kind")
    options = parser.parse_args()
    gc.set_threshold(*GC_THRESHOLDS)
    decisions = Decisions()
    for number in range(options.rounds):
        decisions.round(1)
        decisions.round(4)
        if number % 200 == 199:  # what the engine's sweep does every second
            decisions.state.sweep(lambda _graph_id: False)
    totals: dict[str, float] = defaultdict(float)
    print(f"median us of {options.rounds} rounds (the first quarter left out as warm-up)")
    for decision in DECISIONS:
        for name, samples in decisions.spent.items():
            if name.split(" ", 1)[0] != decision:
                continue
            kept = samples[len(samples) // 4 :]
            median = statistics.median(kept) / 1000
            totals[decision] += median
            print(f"  {name:28s} {median:7.1f}")
    line = ", ".join(f"{decision} {total:.1f}" for decision, total in totals.items())
    print(f"total per decision (us): {line}")
    print(
        "a task at throughput (one-process submission, claim, close): "
        f"{totals['submit1'] + totals['claim'] + totals['close']:.1f} us"
    )


if __name__ == "__main__":
    main()
