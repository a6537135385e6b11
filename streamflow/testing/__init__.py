"""The test seam shipped with StreamFlow: run flows and steps on the embedded transport,
and play outside HTTP services with real servers on loopback."""

from streamflow.testing.flows import run_flow, run_step
from streamflow.testing.mocks import MockServices, RecordedCall

__all__ = ["MockServices", "RecordedCall", "run_flow", "run_step"]
