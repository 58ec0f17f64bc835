"""The BGP service: ExaBGP run and fed by the appliance, so the upstream router sends
this director the VIPs' flows while it can serve them (docs/design.rst, "Scale-out")."""
