"""Local stand-ins for Kafka and Legiti, used by `forwarder demo`, the tests and the benchmark.

Nothing here is imported by `forwarder run`: production talks to real Kafka and the real API.
"""
