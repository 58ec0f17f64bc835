"""What the appliance tells the systems that watch it (docs/design.rst, "Monitoring"):
the Prometheus endpoint (metrics.py, exporter.py), the remote syslog senders kept in
step with the model (logging_hosts.py) and the SNMP agent (snmp.py: snmpd and its
AgentX subagent, agentx.py, serving snmp_mib.py's tables). Services of cli.py, floor 4
beside access/."""
