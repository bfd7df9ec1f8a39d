"""Cinder volume drivers shipped with the CSI plugin (loaded through ``volume_driver``)."""
