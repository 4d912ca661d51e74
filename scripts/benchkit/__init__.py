"""The parts of ``scripts/bench.py``, igllama against llama-server side by side.

Each module imports only from those above it in this list:

* ``client``   the HTTP/1.1 client that times every SSE frame of a streamed reply
* ``health``   ``GET /health`` load: wrk, or an asyncio client
* ``machine``  /proc: CPU time of the machine and of a process tree, resident memory
* ``server``   a server under test: spawn, wait until ready, measure, stop
* ``workload`` the prompts and request settings
* ``summary``  the metrics, their targets, the medians per side
* ``steps``    the workloads, one function each, and the list that makes a round
* ``rounds``   the rounds: both servers afresh, steps alternated (ABBA), disturbed ones repeated
* ``report``   the table, the JSON and the PNG chart
* ``cli``      the flags
* ``run``      ``main``: from the flags to the report

The other benchmarks (``bench_models.py``, ``bench_spec.py``, ...) start their
servers with ``server`` and describe the machine with ``machine`` too.
"""
