"""`make service-check`: the agent installed and run under systemd in a throw-away container (see run.py)."""
