"""A python executor written against pycolonies only (the ColonyOS client from PyPI),
in the style of pycolonies' own examples/python_executor.py. It talks HTTP to the
colonies-es gateway (`colonies gateway`, started by `colonies dev`) as it would to a
ColonyOS server.

    source .colonies/dev.env
    python examples/pycolonies/python_executor.py [executortype]

It makes itself a key, registers as an executor of the colony with the colony owner's key
(COLONIES_COLONY_PRVKEY) and approves itself, then loops: assign (long poll of 10 s),
decode the function's source from env["code"], run it with the process's input (or its
args) and close the process with the result, or fail it with the error. The code it runs
sees `colonies` (this client) and `func_spec` as globals, as the seed's map function
expects. Ctrl-C or SIGTERM stops it: at once while it waits for work, else once the
running function's process is closed.
"""

import base64
import signal
import sys
import time
import traceback
import uuid

from pycolonies import Crypto, colonies_client, func_spec

colonies, colonyname, colony_prvkey, _, _ = colonies_client()
crypto = Crypto()
executor_prvkey = crypto.prvkey()
executortype = sys.argv[1] if len(sys.argv) > 1 else "python-executor"
executorname = f"pycolonies-{uuid.uuid4().hex[:8]}"
running = True
busy = False  # running a function: a stop waits for it to close its process


def stop(signum, frame):
    global running
    running = False
    if not busy:  # waiting in assign: nothing to finish
        sys.exit(0)


def register():
    colonies.add_executor(
        {
            "executorname": executorname,
            "executorid": crypto.id(executor_prvkey),
            "colonyname": colonyname,
            "executortype": executortype,
        },
        colony_prvkey,
    )
    colonies.approve_executor(colonyname, executorname, colony_prvkey)
    print(f"executor {executorname} ({executortype}) registered", flush=True)


def run(process):
    code = base64.b64decode(process.spec.env["code"]).decode("utf-8")
    scope = {"colonies": colonies, "func_spec": func_spec, "Crypto": Crypto}
    exec(code, scope)
    ctx = {
        "process": process,
        "colonyname": colonyname,
        "executorid": crypto.id(executor_prvkey),
        "executor_prvkey": executor_prvkey,
    }
    args = process.input if process.input else process.spec.args
    result = scope[process.spec.funcname](*args, ctx=ctx)
    if result is None:
        return []
    return list(result) if isinstance(result, tuple) else [result]


def serve():
    global busy
    while running:
        try:
            process = colonies.assign(colonyname, 10, executor_prvkey)
        except Exception as error:
            if "No process available" not in str(error):  # not just "nothing within 10 s"
                print(f"assign: {error}", file=sys.stderr, flush=True)
                time.sleep(1)
            continue
        print(f"assigned {process.spec.funcname} ({process.processid[:12]})", flush=True)
        busy = True
        try:
            output = run(process)
        except Exception as error:
            colonies.fail(process.processid, [repr(error), traceback.format_exc()], executor_prvkey)
        else:
            colonies.close(process.processid, output, executor_prvkey)
        finally:
            busy = False


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    register()
    serve()
