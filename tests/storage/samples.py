"""Sample os-brick connector properties for the storage tests (importable as ``samples``)."""

NODE_A = {
    "platform": "x86_64",
    "os_type": "linux",
    "ip": "192.0.2.10",
    "host": "node-a",
    "multipath": False,
    "initiator": "iqn.2004-10.com.example:node-a",
    "do_local_attach": False,
}
NODE_B = {
    **NODE_A,
    "ip": "192.0.2.11",
    "host": "node-b",
    "initiator": "iqn.2004-10.com.example:node-b",
}
