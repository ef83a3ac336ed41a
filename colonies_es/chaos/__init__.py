"""Fault injection: prove that nothing acknowledged is lost when components crash.

:func:`~.run.run_chaos` runs a mixed workload (:mod:`.workload`) on a real stack
(:mod:`.stack`), SIGKILLs and restarts its components at random points, and hands the
raw event log and the journals of acknowledged commands (:mod:`.journal`) to the checker
(:mod:`.checker`). ``python -m colonies_es.chaos --help`` runs it from a shell; the
benchmark group ``python -m benchmarks chaos`` reports its figures.
"""

from colonies_es.chaos.checker import Anomaly, CheckReport
from colonies_es.chaos.run import FAULT_KINDS, ChaosResult, Fault, run_chaos

__all__ = ["FAULT_KINDS", "Anomaly", "ChaosResult", "CheckReport", "Fault", "run_chaos"]
