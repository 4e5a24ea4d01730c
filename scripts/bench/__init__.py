"""Token broker benchmark: one command, the ceiling and the scenarios measured in the same run.

    .venv/bin/python scripts/bench.py                 # default run: ~8 s per scenario, writes bench-results/latest.json
    .venv/bin/python scripts/bench.py --smoke         # seconds-long CI smoke (no figures worth quoting)
    .venv/bin/python scripts/bench.py --workers 2     # also compare 2 workers on 2 cores with 1 worker
    .venv/bin/python scripts/bench.py --rss-requests 1000000   # long RSS-flatness check

What it does (see docs/performance.md):

1. starts a real ``redis-server`` (temp dir, free port, no persistence) and the broker
   (``python -m app serve``), pinned with ``taskset``: broker on core 0, Redis and the load
   generator on core 1, when the machine has at least two usable cores;
2. registers clients through the admin API (bootstrap admin key from ``<keys_dir>/admin.jwk``);
3. measures the ceiling on core 0 while the broker is idle: one client-assertion verify
   (``parse_assertion`` + ``verify_assertion``), one access-token sign (``TokenSigner.sign``),
   one redis-py ``SET NX PX GET`` (32 concurrent callers, the broker's own client settings);
4. pre-generates single-use ES256 assertions before each timed window and drives load with
   ``wrk`` (``scripts/bench/post_bodies.lua``: every assertion sent once, status codes counted)
   or, for the fixed offered rate, a lean open-loop asyncio HTTP/1.1 client;
5. prints a table and writes JSON with the machine, the pinning and the date.

Layout: ``cli`` (flags, the run from start to finish), ``scenarios`` (the one table: name,
expected status, how request bodies are made, ceiling formula), ``workload`` (clients and
pre-generated request bodies), ``load`` (wrk and the open-loop client), ``ceiling`` (in-process
costs), ``system`` (machine, pinning, /proc figures), ``results`` (typed results), ``report``
(the printed table), ``profile`` (py-spy runs and their summary). Processes (Redis, the broker,
client registration) come from ``scripts/processes.py``, shared with the tests and the demo.

Every loop is bounded in count and time; only loopback addresses are used.
"""
