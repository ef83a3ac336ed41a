"""Wire and user models: what clients send and receive, shaped like pycolonies' objects.

Every model is a :class:`msgspec.Struct`. Attribute names are the ones pycolonies users
write (CLIENT_API.md); JSON field names are ColonyOS' and equal the attribute names,
except ``Process.input``/``Process.output``, which are ``in``/``out`` on the wire.

Conventions shared by all models:

- Constructors are keyword-only and every field has a default, so
  ``Process(processid=pid, state=ProcessState.RUNNING)`` builds a complete object.
  Mutable defaults (lists, dicts, nested models) are fresh for every instance.
  Equality compares all fields.
- Times are timezone-aware :class:`~datetime.datetime` objects (UTC when this system
  makes them), or ``None`` while the moment has not come (``endtime`` of a running
  process). On the wire they are RFC 3339 strings as in ColonyOS' JSON
  (``"2024-01-15T10:30:00.123456Z"``) or ``null``; decoding refuses a time without an
  offset and keeps any other offset as given. Two integers follow ColonyOS instead:
  ``Process.prioritytime`` and ``Log.timestamp``, both unix nanoseconds.
- States are plain ints (``process.state == 2``); :mod:`colonies_es.states` names them.
- Decoding (:func:`decode`, :func:`from_dict`) ignores unknown fields, since ColonyOS and
  pycolonies send more than is modelled here (``fs``, a graph's ``nodes``...), and refuses
  wrong types, ``null`` in place of a list included, with a :class:`ModelValidationError`
  that names the offending field.
"""

import base64
import inspect
import textwrap
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, TypeVar, cast

import msgspec
from msgspec import field

from colonies_es.states import ExecutorState, ProcessState

__all__ = [
    "Attribute",
    "Colony",
    "Conditions",
    "Executor",
    "ExecutorState",
    "FuncSpec",
    "Log",
    "ModelValidationError",
    "Process",
    "ProcessGraph",
    "ProcessState",
    "Statistics",
    "Timestamp",
    "Workflow",
    "attempt_of",
    "decode",
    "encode",
    "from_dict",
    "func_spec",
    "to_dict",
]

T = TypeVar("T")

Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]
"""A moment in time: an aware datetime (UTC by convention), RFC 3339 on the wire."""


class Conditions(msgspec.Struct, kw_only=True):
    """Where a function may run.

    Only APPROVED executors of ``colonyname`` whose type is ``executortype`` may take the
    process; when ``executornames`` is non-empty, only executors with one of those names.
    ``dependencies`` are the nodenames, in the same workflow, whose outputs the function
    waits for; their order is the order of its input.
    """

    colonyname: str = ""
    executortype: str = ""
    executornames: list[str] = field(default_factory=list)
    dependencies: list[str] = field(default_factory=list)


class FuncSpec(msgspec.Struct, kw_only=True):
    """A function call to run: what to call, with what, where, and within which limits.

    ``nodename`` names the call inside a workflow; left empty, it becomes ``funcname``.
    ``maxwaittime`` and ``maxexectime`` are seconds, ``maxretries`` a count; 0 or -1 mean
    no limit / no retry (SEMANTICS.md). Higher ``priority`` is served first. ``env`` holds
    strings for the executor; the python executor reads the function's source from
    ``env["code"]`` (base64, see :meth:`decoded_code`).
    """

    nodename: str = ""
    funcname: str = ""
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    maxwaittime: int = -1
    maxexectime: int = -1
    maxretries: int = -1
    conditions: Conditions = field(default_factory=Conditions)
    label: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.nodename:
            self.nodename = self.funcname

    def decoded_code(self) -> str | None:
        """The source text carried in ``env["code"]``, or None when there is none.

        Raises ValueError when ``env["code"]`` is not base64 of UTF-8 text.
        """
        encoded = self.env.get("code")
        if encoded is None:
            return None
        try:
            return base64.b64decode(encoded, validate=True).decode("utf-8")
        except ValueError as err:  # binascii.Error, UnicodeDecodeError
            raise ValueError(f'env["code"] is not base64 of UTF-8 text: {err}') from err


class Workflow(msgspec.Struct, kw_only=True):
    """A DAG of function calls to submit at once: nodes are ``functionspecs``, edges their
    ``conditions.dependencies``."""

    colonyname: str = ""
    functionspecs: list[FuncSpec] = field(default_factory=list)


class Attribute(msgspec.Struct, kw_only=True):
    """A key/value note attached to a process (``add_attribute``)."""

    attributeid: str = ""
    targetid: str = ""
    targetcolonyname: str = ""
    targetprocessgraphid: str = ""
    state: int = 0
    attributetype: int = 0
    key: str = ""
    value: str = ""

    @property
    def id(self) -> str:
        """pycolonies' name for :attr:`attributeid`."""
        return self.attributeid


class Process(msgspec.Struct, kw_only=True):
    """One function call as the system tracks it, from submission to its end.

    ``state`` is a :class:`~colonies_es.states.ProcessState` code. ``input`` (wire ``in``)
    is what the call receives from its parents, ``output`` (wire ``out``) what it
    returned, ``errors`` why it failed. ``parents``/``children`` are process ids within
    ``processgraphid`` (empty for a process submitted on its own). ``retries`` counts
    the attempts after the first. ``prioritytime`` orders waiting work (unix ns,
    ColonyOS' convention); the other times are :data:`Timestamp` or None.
    """

    processid: str = ""
    initiatorid: str = ""
    initiatorname: str = ""
    assignedexecutorid: str = ""
    isassigned: bool = False
    state: int = int(ProcessState.WAITING)
    prioritytime: int = 0
    submissiontime: Timestamp | None = None
    starttime: Timestamp | None = None
    endtime: Timestamp | None = None
    waitdeadline: Timestamp | None = None
    execdeadline: Timestamp | None = None
    retries: int = 0
    attributes: list[Attribute] = field(default_factory=list)
    spec: FuncSpec = field(default_factory=FuncSpec)
    waitforparents: bool = False
    parents: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    processgraphid: str = ""
    input: list[Any] = field(default_factory=list, name="in")
    output: list[Any] = field(default_factory=list, name="out")
    errors: list[str] = field(default_factory=list)


def attempt_of(process: Process) -> int:
    """The attempt ``process`` (as ``assign`` handed it out) is at: attempts are numbered
    from 1 and only a retry starts a new one, so it is ``retries + 1``. Executors send it
    with ``close``/``fail`` so that a late report cannot end a later attempt."""
    return process.retries + 1


class ProcessGraph(msgspec.Struct, kw_only=True):
    """A submitted workflow: its processes (``processids``), the roots among them, and
    the graph's ``state`` (a :class:`~colonies_es.states.ProcessState` code)."""

    processgraphid: str = ""
    initiatorid: str = ""
    initiatorname: str = ""
    colonyname: str = ""
    rootprocessids: list[str] = field(default_factory=list)
    state: int = int(ProcessState.WAITING)
    submissiontime: Timestamp | None = None
    starttime: Timestamp | None = None
    endtime: Timestamp | None = None
    processids: list[str] = field(default_factory=list)


class Colony(msgspec.Struct, kw_only=True):
    """A colony: ``colonyid`` is the id of the colony owner's key."""

    colonyid: str = ""
    name: str = ""


class Executor(msgspec.Struct, kw_only=True):
    """An executor registered in a colony: ``executorid`` is the id of its key, ``state``
    an :class:`~colonies_es.states.ExecutorState` code."""

    executorid: str = ""
    executortype: str = ""
    executorname: str = ""
    colonyname: str = ""
    state: int = int(ExecutorState.PENDING)
    requirefuncreg: bool = False
    commissiontime: Timestamp | None = None
    lastheardfromtime: Timestamp | None = None

    @property
    def name(self) -> str:
        """pycolonies' name for :attr:`executorname`."""
        return self.executorname


class Log(msgspec.Struct, kw_only=True):
    """One log message of a process (``add_log``); ``timestamp`` is unix nanoseconds, the
    unit of ``get_process_log``'s ``since``."""

    processid: str = ""
    colonyname: str = ""
    executorname: str = ""
    message: str = ""
    timestamp: int = 0


class Statistics(msgspec.Struct, kw_only=True):
    """Counts for a colony (``stats``): processes and workflows per state."""

    colonies: int = 0
    executors: int = 0
    waitingprocesses: int = 0
    runningprocesses: int = 0
    successfulprocesses: int = 0
    failedprocesses: int = 0
    waitingworkflows: int = 0
    runningworkflows: int = 0
    successfulworkflows: int = 0
    failedworkflows: int = 0


# --- func_spec ---------------------------------------------------------------------------


def func_spec(
    func: Callable[..., object] | str,
    args: Sequence[Any],
    colonyname: str,
    executortype: str,
    executorname: str | None = None,
    priority: int = 1,
    maxexectime: int = -1,
    maxretries: int = -1,
    maxwaittime: int = -1,
    code: str | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> FuncSpec:
    """Describe a call of ``func``, for ``submit_func_spec`` or a :class:`Workflow`.

    - ``func`` a callable: ``funcname`` and ``nodename`` are ``func.__name__``. Its source
      (dedented, so functions defined in an indented block run too) travels base64 in
      ``env["code"]``, and the names of its positional parameters, comma-separated, in
      ``env["args_spec"]`` (``"n1,n2,ctx"`` for ``sum_nums(n1, n2, ctx={})``), as
      pycolonies does. A ``code`` given here replaces the source read from ``func``.
    - ``func`` a name: ``funcname`` and ``nodename`` are that name; ``code``, when given,
      travels in ``env["code"]`` the same way.
    - ``executorname`` restricts the call to the executor of that name.

    ``args`` and ``kwargs`` are copied: the spec shares no list or dict with the caller.
    Raises ValueError when the source of ``func`` cannot be read (a built-in, or a
    function typed into an interactive session); pass its name and ``code`` instead.
    """
    env: dict[str, str] = {}
    if isinstance(func, str):
        funcname = func
    else:
        funcname = func.__name__
        if code is None:
            code = _source_of(func)
        env["args_spec"] = ",".join(inspect.getfullargspec(func).args)
    if code is not None:
        env["code"] = base64.b64encode(code.encode("utf-8")).decode("ascii")
    return FuncSpec(
        nodename=funcname,
        funcname=funcname,
        args=list(args),
        kwargs=dict(kwargs or {}),
        priority=priority,
        maxwaittime=maxwaittime,
        maxexectime=maxexectime,
        maxretries=maxretries,
        conditions=Conditions(
            colonyname=colonyname,
            executortype=executortype,
            executornames=[] if executorname is None else [executorname],
        ),
        env=env,
    )


def _source_of(func: Callable[..., object]) -> str:
    try:
        return textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError) as err:
        raise ValueError(
            f"cannot read the source of {func!r} ({err}); "
            "pass the function's name as func and its source as code"
        ) from err


# --- encoding ----------------------------------------------------------------------------


class ModelValidationError(ValueError):
    """Data did not match the model it was decoded into.

    ``str(error)`` reads ``"<path>: <reason>"``, for example
    ``"functionspecs[1].conditions.dependencies: expected array, got str"``. ``path``
    uses wire names (``in``, not ``input``) and is the model's name when the document as
    a whole is wrong (not JSON, not an object).
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


_ENCODER = msgspec.json.Encoder()


def encode(obj: object) -> bytes:
    """JSON bytes of a model (or of builtins and lists of models), with wire names."""
    return _ENCODER.encode(obj)


def decode(data: bytes | str, type: type[T]) -> T:
    """The ``type`` (a model, or e.g. ``list[Process]``) read from JSON ``data``.

    Raises ModelValidationError when ``data`` is not JSON or does not fit ``type``.
    """
    try:
        return msgspec.json.decode(data, type=type)
    except msgspec.DecodeError as err:
        raise _readable(err, type) from err


def to_dict(obj: msgspec.Struct) -> dict[str, Any]:
    """A model as plain JSON-ready builtins: wire names, times as RFC 3339 strings.

    Equals ``json.loads(encode(obj))``; :func:`from_dict` reverses it.
    """
    return cast(dict[str, Any], msgspec.to_builtins(obj))


def from_dict(data: Mapping[str, Any], type: type[T]) -> T:
    """The ``type`` built from a plain dict with wire names, e.g. pycolonies' colony and
    executor dicts. Fields left out take their defaults.

    Raises ModelValidationError when a value does not fit its field.
    """
    try:
        return msgspec.convert(data, type)
    except msgspec.ValidationError as err:
        raise _readable(err, type) from err


def _readable(err: msgspec.DecodeError, target: object) -> ModelValidationError:
    # msgspec reads "Expected `array`, got `str` - at `$.functionspecs[1].args`".
    reason, _, location = str(err).partition(" - at `$")
    reason = reason.replace("`", "")
    if reason[:2].istitle():  # "Expected ..." -> "expected ...", but "JSON ..." stays
        reason = reason[0].lower() + reason[1:]
    if not isinstance(err, msgspec.ValidationError):
        reason = f"invalid JSON: {reason.removeprefix('JSON is malformed: ')}"
    path = location.removesuffix("`").removeprefix(".")
    if not path:
        path = target.__name__ if isinstance(target, type) else repr(target)
    return ModelValidationError(path, reason)
