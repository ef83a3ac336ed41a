"""The wire/user models: JSON shape, defaults, func_spec and readable validation errors."""

import base64
import inspect
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from colonies_es.models import (
    Attribute,
    Colony,
    Conditions,
    Executor,
    FuncSpec,
    Log,
    ModelValidationError,
    Process,
    ProcessGraph,
    Statistics,
    Workflow,
    decode,
    encode,
    from_dict,
    func_spec,
    to_dict,
)
from colonies_es.states import ExecutorState, ProcessState

# The seed's functions (seed/workflows-tutorial.md), annotated for mypy.


def gen_nums(ctx: dict[str, object] = {}) -> tuple[int, int]:  # noqa: B006 (seed's signature)
    return 1, 2


def sum_nums(n1: int, n2: int, ctx: dict[str, object] = {}) -> int:  # noqa: B006
    return n1 + n2


def reduce(*nums: int, ctx: dict[str, object] = {}) -> int:  # noqa: B006
    return sum(nums)


GEN_NUMS_CODE = """def gen_nums(ctx={}):
    return 1, 2"""

T0 = datetime(2024, 1, 15, 10, 30, 0, 123456, tzinfo=UTC)


def run_code(code: str, funcname: str) -> Any:
    """The function named ``funcname`` defined by running ``code``, as an executor would."""
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    return namespace[funcname]


def sample_spec() -> FuncSpec:
    spec = func_spec(
        func=sum_nums,
        args=[1, "two", 3.5, None, {"k": [1]}],
        colonyname="dev",
        executortype="python-executor",
        executorname="exec-1",
        maxexectime=100,
        maxwaittime=50,
        maxretries=3,
        kwargs={"scale": 2},
    )
    spec.conditions.dependencies.append("gen_nums")
    spec.label = "sum"
    return spec


SAMPLES: list[msgspec.Struct] = [
    Conditions(colonyname="dev", executortype="t", executornames=["a"], dependencies=["x"]),
    sample_spec(),
    Workflow(colonyname="dev", functionspecs=[sample_spec(), FuncSpec(funcname="gen_nums")]),
    Process(
        processid="p" * 64,
        initiatorid="i" * 64,
        initiatorname="alice",
        assignedexecutorid="e" * 64,
        isassigned=True,
        state=int(ProcessState.SUCCESS),
        prioritytime=1_705_314_600_000_000_000,
        submissiontime=T0,
        starttime=T0 + timedelta(seconds=1),
        endtime=T0 + timedelta(seconds=2),
        waitdeadline=T0 + timedelta(seconds=100),
        execdeadline=T0 + timedelta(seconds=101),
        retries=1,
        attributes=[Attribute(attributeid="a", targetid="p", key="k", value="v")],
        spec=sample_spec(),
        waitforparents=True,
        parents=["q" * 64],
        children=["r" * 64],
        processgraphid="g" * 64,
        input=[1, 2],
        output=[3],
        errors=["ValueError: boom"],
    ),
    ProcessGraph(
        processgraphid="g" * 64,
        initiatorid="i" * 64,
        initiatorname="alice",
        colonyname="dev",
        rootprocessids=["p" * 64],
        state=int(ProcessState.RUNNING),
        submissiontime=T0,
        starttime=T0,
        processids=["p" * 64, "q" * 64],
    ),
    Colony(colonyid="c" * 64, name="dev"),
    Executor(
        executorid="e" * 64,
        executortype="python-executor",
        executorname="exec-1",
        colonyname="dev",
        state=int(ExecutorState.APPROVED),
        commissiontime=T0,
    ),
    Log(processid="p", colonyname="dev", executorname="exec-1", message="hi", timestamp=7),
    Statistics(colonies=1, executors=2, waitingprocesses=3, failedworkflows=4),
]


# --- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("model", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_model_survives_a_json_round_trip(model: msgspec.Struct) -> None:
    assert decode(encode(model), type(model)) == model


@pytest.mark.parametrize("model", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_model_survives_a_dict_round_trip(model: msgspec.Struct) -> None:
    as_dict = to_dict(model)
    assert as_dict == json.loads(encode(model))
    assert from_dict(as_dict, type(model)) == model


def test_default_models_survive_a_round_trip() -> None:
    for model_type in (Conditions, FuncSpec, Workflow, Process, ProcessGraph, Executor):
        assert decode(encode(model_type()), model_type) == model_type()


def test_a_list_of_models_decodes() -> None:
    processes = [Process(processid="a"), Process(processid="b", output=[1])]
    assert decode(encode(processes), list[Process]) == processes


# --- wire names and representation -------------------------------------------------------


def test_process_input_and_output_are_in_and_out_on_the_wire() -> None:
    wire = json.loads(encode(Process(input=[1, 2], output=[3])))
    assert wire["in"] == [1, 2]
    assert wire["out"] == [3]
    assert "input" not in wire
    assert "output" not in wire


def test_wire_in_and_out_fill_input_and_output() -> None:
    process = decode(b'{"processid": "p", "in": [1, 2], "out": ["x"]}', Process)
    assert process.input == [1, 2]
    assert process.output == ["x"]


def test_times_are_rfc3339_utc_strings_on_the_wire_and_none_until_they_happen() -> None:
    wire = json.loads(encode(Process(submissiontime=T0)))
    assert wire["submissiontime"] == "2024-01-15T10:30:00.123456Z"
    assert wire["endtime"] is None
    decoded = decode(encode(Process(submissiontime=T0)), Process)
    assert decoded.submissiontime == T0
    assert decoded.submissiontime is not None
    assert decoded.submissiontime.utcoffset() == timedelta(0)


def test_times_with_another_offset_keep_their_instant() -> None:
    wire = b'{"starttime": "2024-01-15T12:30:00.123456+02:00"}'
    assert decode(wire, Process).starttime == T0


def test_unknown_fields_from_colonyos_are_ignored() -> None:
    wire = {
        "processgraphid": "g",
        "nodes": [{"id": "n"}],
        "edges": [],
    }
    assert from_dict(wire, ProcessGraph) == ProcessGraph(processgraphid="g")
    spec = decode(b'{"funcname": "f", "fs": {"mount": "/x"}, "channels": []}', FuncSpec)
    assert spec.funcname == "f"


def test_states_are_plain_ints_with_named_codes() -> None:
    assert [int(s) for s in ProcessState] == [0, 1, 2, 3, 4]
    assert [int(s) for s in ExecutorState] == [0, 1, 2]
    assert Process().state == ProcessState.WAITING
    assert Executor().state == ExecutorState.PENDING
    process = decode(encode(Process(state=ProcessState.SUCCESS)), Process)
    assert process.state == 2
    assert type(process.state) is int


# --- defaults ---------------------------------------------------------------------------


def test_default_lists_and_dicts_are_not_shared_between_instances() -> None:
    first, second = FuncSpec(), FuncSpec()
    first.conditions.dependencies.append("gen_nums")
    first.conditions.executornames.append("e")
    first.args.append(1)
    first.kwargs["k"] = 1
    first.env["code"] = "x"
    assert second == FuncSpec()
    assert Conditions().dependencies == []

    workflow = Workflow(colonyname="x")
    workflow.functionspecs.append(first)
    assert Workflow(colonyname="x").functionspecs == []

    process = Process()
    for items in (process.parents, process.children, process.input, process.output):
        items.append("x")
    process.errors.append("e")
    process.spec.args.append(1)
    assert Process() == Process(spec=FuncSpec())
    assert Process().parents == []


def test_nodename_defaults_to_funcname() -> None:
    assert FuncSpec(funcname="f").nodename == "f"
    assert FuncSpec(funcname="f", nodename="n").nodename == "n"
    assert decode(b'{"funcname": "f"}', FuncSpec).nodename == "f"
    assert decode(b'{"funcname": "f", "nodename": ""}', FuncSpec).nodename == "f"


def test_constructors_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        Colony("c", "dev")  # type: ignore[call-arg]


# --- func_spec --------------------------------------------------------------------------


def test_func_spec_of_a_callable_names_it_and_carries_its_source() -> None:
    spec = func_spec(
        func=gen_nums,
        args=[],
        colonyname="dev",
        executortype="python-executor",
        maxexectime=100,
        maxwaittime=100,
    )
    assert spec.funcname == spec.nodename == "gen_nums"
    assert spec.args == []
    assert spec.kwargs == {}
    assert (spec.priority, spec.maxexectime, spec.maxwaittime, spec.maxretries) == (
        1,
        100,
        100,
        -1,
    )
    assert spec.conditions == Conditions(colonyname="dev", executortype="python-executor")
    assert set(spec.env) == {"code", "args_spec"}
    assert spec.env["args_spec"] == "ctx"
    source = inspect.getsource(gen_nums)
    assert base64.b64decode(spec.env["code"]).decode("utf-8") == source
    assert spec.decoded_code() == source
    assert run_code(source, "gen_nums")() == (1, 2)


def test_func_spec_args_spec_lists_the_positional_parameters() -> None:
    def spec_of(func: Any) -> FuncSpec:
        return func_spec(func, [], "dev", "python-executor")

    assert spec_of(sum_nums).env["args_spec"] == "n1,n2,ctx"
    assert spec_of(reduce).env["args_spec"] == ""


def test_func_spec_code_survives_the_wire_and_runs() -> None:
    spec = decode(encode(func_spec(sum_nums, [], "dev", "python-executor")), FuncSpec)
    code = spec.decoded_code()
    assert code is not None
    assert run_code(code, "sum_nums")(1, 2) == 3


def test_func_spec_of_a_nested_function_carries_dedented_runnable_source() -> None:
    def double(x: int, ctx: dict[str, object] = {}) -> int:  # noqa: B006
        return 2 * x

    code = func_spec(double, [4], "dev", "python-executor").decoded_code()
    assert code is not None
    assert code.startswith("def double(")
    assert run_code(code, "double")(4) == 8


def test_func_spec_of_a_name_with_code_carries_the_code() -> None:
    spec = func_spec(
        func="gen_nums",
        args=[],
        colonyname="dev",
        executortype="python-executor",
        maxexectime=100,
        maxwaittime=100,
        code=GEN_NUMS_CODE,
    )
    assert spec.funcname == spec.nodename == "gen_nums"
    assert set(spec.env) == {"code"}
    assert spec.decoded_code() == GEN_NUMS_CODE
    assert run_code(GEN_NUMS_CODE, "gen_nums")() == (1, 2)


def test_func_spec_of_a_name_without_code_has_an_empty_env() -> None:
    spec = func_spec("fetch", ["dataset"], "dev", "container-executor")
    assert spec.funcname == spec.nodename == "fetch"
    assert spec.args == ["dataset"]
    assert spec.env == {}
    assert spec.decoded_code() is None


def test_func_spec_code_given_with_a_callable_replaces_its_source() -> None:
    spec = func_spec(gen_nums, [], "dev", "python-executor", code=GEN_NUMS_CODE)
    assert spec.decoded_code() == GEN_NUMS_CODE
    assert spec.env["args_spec"] == "ctx"


def test_func_spec_code_may_be_any_unicode() -> None:
    code = 'def greet(ctx={}):\n    return "héllo ✓"\n'
    assert func_spec("greet", [], "dev", "t", code=code).decoded_code() == code


def test_func_spec_executorname_targets_that_executor_only() -> None:
    targeted = func_spec("f", [], "dev", "t", executorname="exec-1")
    assert targeted.conditions.executornames == ["exec-1"]
    assert func_spec("f", [], "dev", "t").conditions.executornames == []


def test_func_spec_copies_args_and_kwargs() -> None:
    args: list[Any] = [1]
    kwargs: dict[str, Any] = {"k": "v"}
    spec = func_spec("f", args, "dev", "t", kwargs=kwargs)
    args.append(2)
    kwargs["other"] = 1
    assert spec.args == [1]
    assert spec.kwargs == {"k": "v"}


def test_func_spec_refuses_a_function_whose_source_cannot_be_read() -> None:
    namespace: dict[str, Any] = {}
    exec("def typed_in(ctx={}):\n    return 1\n", namespace)
    with pytest.raises(ValueError, match=r"cannot read the source .* pass the function's name"):
        func_spec(namespace["typed_in"], [], "dev", "t")


def test_the_tutorial_workflow_builds_and_travels() -> None:
    colony_name = "test"
    wf = Workflow(colonyname=colony_name)
    f1 = func_spec(
        func=gen_nums,
        args=[],
        colonyname=colony_name,
        executortype="python-executor",
        maxexectime=100,
        maxwaittime=100,
    )
    wf.functionspecs.append(f1)
    f2 = func_spec(
        func=sum_nums,
        args=[],
        colonyname=colony_name,
        executortype="python-executor",
        maxexectime=100,
        maxwaittime=100,
    )
    f2.conditions.dependencies.append("gen_nums")
    wf.functionspecs.append(f2)

    assert f1.conditions.dependencies == []
    received = decode(encode(wf), Workflow)
    assert received == wf
    assert [s.nodename for s in received.functionspecs] == ["gen_nums", "sum_nums"]
    assert received.functionspecs[1].conditions.dependencies == ["gen_nums"]


def test_decoded_code_refuses_what_is_not_base64_of_utf8() -> None:
    with pytest.raises(ValueError, match="is not base64 of UTF-8 text"):
        FuncSpec(funcname="f", env={"code": "not base64!"}).decoded_code()
    not_utf8 = base64.b64encode(b"\xff").decode("ascii")
    with pytest.raises(ValueError, match="is not base64 of UTF-8 text"):
        FuncSpec(funcname="f", env={"code": not_utf8}).decoded_code()


# --- validation errors ------------------------------------------------------------------


def test_a_wrong_type_deep_in_a_workflow_names_its_path() -> None:
    wire = json.dumps(
        {
            "colonyname": "dev",
            "functionspecs": [
                {"funcname": "gen_nums"},
                {"funcname": "sum_nums", "conditions": {"dependencies": "gen_nums"}},
            ],
        }
    )
    with pytest.raises(ModelValidationError) as caught:
        decode(wire, Workflow)
    assert str(caught.value) == "functionspecs[1].conditions.dependencies: expected array, got str"
    assert caught.value.path == "functionspecs[1].conditions.dependencies"
    assert caught.value.reason == "expected array, got str"
    assert isinstance(caught.value, ValueError)


def test_null_where_a_list_or_dict_belongs_is_refused() -> None:
    with pytest.raises(ModelValidationError, match=r"^functionspecs\[0\]\.kwargs: expected object"):
        decode(b'{"functionspecs": [{"funcname": "f", "kwargs": null}]}', Workflow)


def test_errors_use_wire_names() -> None:
    with pytest.raises(ModelValidationError, match=r"^in: expected array, got int$"):
        decode(b'{"in": 5}', Process)


def test_a_wrong_document_is_named_after_the_model() -> None:
    with pytest.raises(ModelValidationError, match=r"^Workflow: expected object, got array$"):
        decode(b"[1]", Workflow)
    with pytest.raises(ModelValidationError, match=r"^Workflow: invalid JSON: "):
        decode(b'{"colonyname": ', Workflow)
    with pytest.raises(ModelValidationError, match=r"^Workflow: invalid JSON: trailing"):
        decode(b"{}x", Workflow)


def test_a_time_without_offset_is_refused() -> None:
    with pytest.raises(ModelValidationError, match=r"^starttime: expected datetime with a time"):
        decode(b'{"starttime": "2024-01-15T10:30:00"}', Process)


def test_an_error_inside_a_list_of_models_names_the_index() -> None:
    with pytest.raises(ModelValidationError, match=r"^\[1\]\.processid: expected str, got int$"):
        decode(b'[{"processid": "a"}, {"processid": 7}]', list[Process])


# --- dicts ------------------------------------------------------------------------------


def test_pycolonies_colony_and_executor_dicts_convert() -> None:
    colony = from_dict({"colonyid": "c" * 64, "name": "dev"}, Colony)
    assert colony == Colony(colonyid="c" * 64, name="dev")
    executor = from_dict(
        {
            "executorname": "exec-1",
            "executorid": "e" * 64,
            "colonyname": "dev",
            "executortype": "python-executor",
        },
        Executor,
    )
    assert executor.executorname == executor.name == "exec-1"
    assert executor.state == ExecutorState.PENDING
    assert executor.commissiontime is None


def test_from_dict_reads_rfc3339_times_and_wire_names() -> None:
    process = from_dict(
        {"submissiontime": "2024-01-15T10:30:00.123456Z", "in": [1], "out": [2]}, Process
    )
    assert process.submissiontime == T0
    assert (process.input, process.output) == ([1], [2])


def test_to_dict_is_json_ready() -> None:
    as_dict = to_dict(Process(submissiontime=T0, input=[1]))
    assert as_dict["submissiontime"] == "2024-01-15T10:30:00.123456Z"
    assert as_dict["in"] == [1]
    assert json.loads(json.dumps(as_dict)) == as_dict


def test_from_dict_errors_are_readable() -> None:
    with pytest.raises(ModelValidationError, match=r"^name: expected str, got int$"):
        from_dict({"name": 5}, Colony)


def test_attribute_keeps_pycolonies_id_name() -> None:
    assert Attribute(attributeid="a1").id == "a1"
