"""PromQL for the collector: parse with ``promql-parser``, evaluate with numpy over ``Storage``.

See ``collector/PROMETHEUS.md``. Entry point: ``engine.Engine``; JSON answers: ``jsonfmt``.
"""
