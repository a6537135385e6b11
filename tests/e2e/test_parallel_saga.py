"""A `parallel` inside a saga, as a flow test (mock services on loopback, embedded broker):
when one branch fails for good, the compensable steps that completed in the other
branches are undone; when all succeed, the branch results are there after the join."""

from __future__ import annotations

from pathlib import Path

from streamflow.testing.cases import load_test_files, run_test_files

INTEGRATION = """\
apiVersion: streamflow/v1
kind: Integration
name: trip
config:
  hotel_url: {type: string}
  flight_url: {type: string}
flows:
  - name: book
    partitions: 2
    trigger: {type: manual}
    retry: {max_attempts: 2, delay: 50ms, jitter: false}
    steps:
      - id: both
        type: parallel
        branches:
          hotel:
            - id: hotel
              type: http
              method: POST
              url: ${config.hotel_url}/bookings
              json: {trip: "${payload.trip}"}
              replace_payload: true      # the branch's result: the booking
              compensate:
                type: http
                method: DELETE
                url: ${config.hotel_url}/bookings/${steps.hotel.body.id}
          flight:
            - id: flight
              type: http
              method: POST
              url: ${config.flight_url}/bookings
              json: {trip: "${payload.trip}"}
              replace_payload: true
      - id: summary
        type: transform
        output:
          trip: ${payload.trip}
          hotel: ${steps.both.hotel.id}
          flight: ${steps.both.flight.id}
"""
MOCKS = """\
services:
  hotel:
    config: hotel_url
    routes:
      - {method: POST, path: /bookings, status: 201, json: {id: "H-${request.json.trip}"}}
      - {method: DELETE, path: "/bookings/{id}", status: 204}
  flight:
    config: flight_url
    routes:
      - {method: POST, path: /bookings, status: 503}
"""
TESTS = """\
integration: integration.yaml
mocks: mocks.yaml
cases:
  - name: the flight cannot be booked - the hotel booking is cancelled
    events: [{trip: t1}]
    expect:
      status: compensated
      error: branch flight failed
      calls:
        - {service: hotel, method: POST, path: /bookings, count: 1}
        - {service: flight, method: POST, path: /bookings, count: 2}
        - {service: hotel, method: DELETE, path: /bookings/H-t1, count: 1}
  - name: both booked - the results are there after the join
    mocks:
      services:
        flight:
          config: flight_url
          routes: [{method: POST, path: /bookings, status: 201, json: {id: F-1}}]
    events: [{trip: t2}]
    expect:
      status: completed
      output: {trip: t2, hotel: H-t2, flight: F-1}
      calls:
        - {service: hotel, method: DELETE, count: 0}
"""


async def test_parallel_in_a_saga(tmp_path: Path) -> None:
    (tmp_path / "integration.yaml").write_text(INTEGRATION)
    (tmp_path / "mocks.yaml").write_text(MOCKS)
    (tmp_path / "tests.yaml").write_text(TESTS)
    results = await run_test_files(load_test_files([tmp_path]))
    assert len(results) == 2
    assert all(r.passed for r in results), "\n".join(r.details() for r in results)
