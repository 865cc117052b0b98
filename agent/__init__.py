"""edgemon agent: samples this host into a local SQLite buffer and ships batches over MQTT.

Modules: ``config`` (TOML + environment), ``log`` (JSON lines), ``buffer`` (SQLite),
``storage`` (the buffer as the runner sees it: never raises on disk errors), ``publisher``
(MQTT), ``sender`` (what to publish when), ``selfmetrics`` (the agent's own health),
``runner`` (the main loop), ``cli`` (``edgemon-agent``). Metric families live in ``families``.
"""

__version__ = "0.1.0"
