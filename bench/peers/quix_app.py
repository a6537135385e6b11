# mypy: ignore-errors
"""The bench pipelines in Quix Streams, written the way its docs write them.

Runs in the quixstreams virtualenv (bench/venvs.py), started by bench.run:

    python -m bench.peers.quix_app --bootstrap B --input IN --output OUT --group G --steps 1
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--steps", type=int, choices=(1, 3), default=1)
    ap.add_argument("--commit-interval", type=float, default=0.1)
    args = ap.parse_args()

    from quixstreams import Application

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=args.commit_interval,
        processing_guarantee="at-least-once",
        loglevel="WARNING",
    )
    source = app.topic(args.input, value_deserializer="json")
    sink = app.topic(args.output, value_serializer="json")
    sdf = app.dataframe(source)
    sdf = sdf.apply(
        lambda v: {
            "id": v["id"],
            "user": v["user"],
            "total": v["amount"] * 1.2,
            "note": v["note"],
            "ts": v["ts"],
        }
    )
    if args.steps == 3:
        sdf = sdf.filter(lambda v: v["total"] >= 0)
        sdf = sdf.apply(
            lambda v: {"id": v["id"], "gross": v["total"], "who": v["user"].upper(), "ts": v["ts"]}
        )
    sdf.to_topic(sink)
    app.run()


if __name__ == "__main__":
    main()
