"""Peer pipelines (Quix Streams, faust-streaming): each runs in its own virtualenv, made by
bench/venvs.py, and imports nothing of StreamFlow."""
