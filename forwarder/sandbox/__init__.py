"""Local stand-ins for Kafka and Legiti, and the means to run a forwarder against them
and read it back: its settings, its child process, its metrics. Used by `forwarder demo`,
the tests and the benchmark.

Nothing here is imported by `forwarder run`: production talks to real Kafka and the real API.
"""
