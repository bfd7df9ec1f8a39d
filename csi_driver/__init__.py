"""Kubernetes CSI plugin that drives OpenStack Cinder volume drivers directly."""

import os

__version__ = "0.1.0"

# The plugin forks only to exec tools (os-brick and Cinder drivers run nvme, iscsiadm,
# lvs...). gRPC's fork handlers, on by default, made such children abort before exec
# while RPCs were in flight (measured: `nvme version` exit -6, "epoll_wait error").
# Set before anything imports grpc; an explicit setting in the environment wins.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
