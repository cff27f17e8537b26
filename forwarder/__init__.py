"""Kafka → Legiti track_auth forwarder."""

__version__ = "0.1.0"
