"""sinks/legiti"""
