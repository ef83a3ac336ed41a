"""The engine's structure: every op of the protocol has exactly one typed handler."""

from __future__ import annotations

import inspect

from colonies_es.engine.ops import HANDLERS, Reply
from colonies_es.protocol import OPS


def test_every_protocol_op_has_a_handler_taking_its_body_type() -> None:
    assert set(HANDLERS) == set(OPS)
    for name, op in HANDLERS.items():
        assert op.body is OPS[name], name
        assert inspect.iscoroutinefunction(op.handle), name
        hints = inspect.get_annotations(op.handle, eval_str=True)
        assert hints["body"] is OPS[name], name
        assert hints["return"] is Reply, name
