"""Offline tools run against a stopped server's data directory."""
