"""Shared by the CSI tests: real plugin processes and the csi-sanity runner."""
