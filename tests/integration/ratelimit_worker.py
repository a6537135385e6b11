"""A worker process for the shared rate-limit test: runs the ``call`` step of a topology
``n`` times at once (``python -m tests.integration.ratelimit_worker PATH REDIS_URL N ID``)."""

from __future__ import annotations

import asyncio
import sys

from streamflow.steps.base import Resources
from streamflow.topology.loader import load_integration
from streamflow.topology.values import resolve_config
from tests.integration.conftest import StepRunner


async def main(path: str, redis_url: str, n: int, worker: str) -> None:
    integration = load_integration(path)
    config = resolve_config(integration.config, {"redis_url": redis_url})
    runner = StepRunner(integration, config, Resources())
    try:
        await asyncio.gather(*(runner.run("call", {"w": worker, "i": i}) for i in range(n)))
    finally:
        await runner.close()
    print(f"worker {worker}: {n} calls made")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
