"""The agent loop and what it needs: agents and their supervisor (agent, app, runner),
processing (processor, retrying, trigger, split, aggregate, state), retry and the circuit
breaker, containment, dead letters and the saga."""
