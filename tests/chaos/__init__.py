"""The chaos run (`make chaos`, `make soak`): the whole store as separate processes on 127.0.0.1, faults between
the agent and central, kills and restarts, a driver selling through the local API, then checks of every fen from
the parties' own records. Run it as `python -m tests.chaos` (see `__main__.py`); pytest collects only the fault
proxy's own tests here (`test_fault_proxy.py`)."""
