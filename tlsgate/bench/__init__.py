"""Experiments run against a real gateway and real clients.

- :mod:`tlsgate.bench.deadlock` — ``tlsgate deadlock``: the on-demand client certificate
  deadlock matrix (SPEC §7), with its clients (:mod:`~tlsgate.bench.deadlock_clients`), its
  gateway (:mod:`~tlsgate.bench.deadlock_lab`) and its reports
  (:mod:`~tlsgate.bench.deadlock_report`, :mod:`~tlsgate.bench.deadlock_heatmap`).
- The load benchmark behind ``tlsgate bench`` lives beside it (``load*.py``).
"""
