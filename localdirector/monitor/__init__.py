"""What the appliance tells the systems that watch it (docs/design.rst, "Monitoring"):
the Prometheus endpoint (metrics.py, exporter.py) and the remote syslog senders kept in
step with the model (logging_hosts.py). Services of cli.py, floor 4 beside access/."""
