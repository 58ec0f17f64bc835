"""The failover pair (docs/design.rst, "Failover"): keepalived for VRRP, conntrackd for
the fast path's conntrack state, both configured from the model and supervised by the
appliance; the service that runs them is `service.py`."""
