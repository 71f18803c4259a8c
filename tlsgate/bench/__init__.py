"""Experiments run against a real gateway and real clients.

- :mod:`tlsgate.bench.deadlock` — ``tlsgate deadlock``: the on-demand client certificate
  deadlock matrix (SPEC §7), with its clients (:mod:`~tlsgate.bench.deadlock_clients`), its
  gateway (:mod:`~tlsgate.bench.deadlock_lab`) and its reports
  (:mod:`~tlsgate.bench.deadlock_report`, :mod:`~tlsgate.bench.deadlock_heatmap`).
- :mod:`tlsgate.bench.load` — ``tlsgate bench``: the load generator with client
  certificates (modes handshake, resume, h1, h2, upload), with its clients
  (:mod:`~tlsgate.bench.load_clients`, :mod:`~tlsgate.bench.load_tls`), flags
  (:mod:`~tlsgate.bench.load_cli`) and reports (:mod:`~tlsgate.bench.load_report`).
"""
