"""Kubernetes CSI plugin that drives OpenStack Cinder volume drivers directly."""

__version__ = "0.1.0"
