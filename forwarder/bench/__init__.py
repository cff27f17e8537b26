"""`python -m forwarder.bench`: how fast the forwarder is, next to the limits it runs against.

One command starts a broker and a fast sink, preloads a realistic topic and
measures the forwarder, the raw HTTP and consume ceilings and a naive
forwarder on the same machine in the same run, so that the numbers can be
compared with each other rather than with a laptop somewhere else.
"""
