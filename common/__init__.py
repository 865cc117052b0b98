"""Plumbing the agent and the collector share: standard library (and paho) only.

``edgemon.protocol`` is the wire contract; this package is everything else both programs need
once: systemd notification, the single-instance lock (and running a program under it), JSON
logs with throttling, private-file checks and atomic writes, TOML configuration files (line
positions, environment overrides), the wall clock in milliseconds, reading an SQLite file
another process writes. The agent imports it, so it must stay light:
``tests/test_common_imports.py`` checks it loads nothing outside the standard library and paho.
"""
