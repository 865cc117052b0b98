"""edgemon agent: samples this host into a local SQLite buffer and ships batches over MQTT.

Modules: ``config`` (TOML + environment), ``buffer`` (operations on the SQLite buffer),
``buffer_file`` (its schema, checks and statistics), ``buffer_store`` (the buffer as the runner
sees it: never raises on disk errors), ``publisher`` (MQTT), ``presence`` (which collectors are
online), ``sender`` (what to publish when), ``selfmetrics`` (the agent's own health), ``runner``
(the main loop), ``cli`` (``edgemon-agent``). Metric families live in ``families``; logging,
sd_notify and the single-instance lock come from ``edgemon.common``.
"""

__version__ = "0.1.0"
