# mypy: ignore-errors
"""The bench pipelines in faust-streaming, written the way its docs write them (an agent
iterating its stream, sending to the output topic).

Runs in the faust virtualenv (bench/venvs.py), started by bench.run:

    python -m bench.peers.faust_app --bootstrap B --input IN --output OUT --group G --steps 1
"""

from __future__ import annotations

import argparse
import sys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--steps", type=int, choices=(1, 3), default=1)
    ap.add_argument("--commit-interval", type=float, default=0.1)
    args = ap.parse_args()

    import faust

    app = faust.App(
        args.group,  # the app id is faust's consumer group
        broker=f"kafka://{args.bootstrap}",
        value_serializer="json",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=args.commit_interval,
        processing_guarantee="at_least_once",
        topic_partitions=6,
    )
    source = app.topic(args.input, key_serializer="raw", value_serializer="json")
    sink = app.topic(args.output, key_serializer="raw", value_serializer="json")

    if args.steps == 1:

        @app.agent(source)
        async def one_step(stream):
            async for key, v in stream.items():
                await sink.send(
                    key=key,
                    value={
                        "id": v["id"],
                        "user": v["user"],
                        "total": v["amount"] * 1.2,
                        "note": v["note"],
                        "ts": v["ts"],
                    },
                )

    else:

        @app.agent(source)
        async def three_steps(stream):
            async for key, v in stream.items():
                a = {
                    "id": v["id"],
                    "user": v["user"],
                    "total": v["amount"] * 1.2,
                    "note": v["note"],
                    "ts": v["ts"],
                }
                if a["total"] >= 0:
                    b = {
                        "id": a["id"],
                        "gross": a["total"],
                        "who": a["user"].upper(),
                        "ts": a["ts"],
                    }
                    await sink.send(key=key, value=b)

    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn", "--without-web"]
    app.main()


if __name__ == "__main__":
    main()
