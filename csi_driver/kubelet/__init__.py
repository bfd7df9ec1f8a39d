"""What the node-driver-registrar and livenessprobe sidecars would do, done by the plugin.

Neither sidecar can be built here (their Go module versions are not fetchable), and
both are thin: ``registration`` serves kubelet's plugin-registration API on a socket in
kubelet's ``plugins_registry`` directory, ``health`` answers kubelet's liveness probe
(HTTP ``/healthz``) by calling the plugin's own Identity.Probe over its gRPC endpoint.
Both run beside the CSI server (``server.serve(companions=...)``).
"""
