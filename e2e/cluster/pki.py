"""The test cluster's PKI and kubeconfigs, made with openssl.

Why openssl and not a library: the harness runs on the system Python (standard library
only) and Debian's openssl is installed with etcd (``make etcd-deps``). Keys are ECDSA
P-256 (fast to make); certificates are valid for a year.

- ``make_pki(dir, sans)``: CA, service-account key pair, kube-apiserver's serving
  certificate (the given subject alternative names), client certificates for admin
  (system:masters), kube-apiserver → kubelet, controller manager and scheduler.
- ``add_client_cert(dir, name, subject)``: one more client certificate from that CA
  (the node's kubelet: ``/O=system:nodes/CN=system:node:<name>``).
- ``write_kubeconfig(path, server, dir, user)``: a kubeconfig for one of them.
"""

from __future__ import annotations

import json
import random
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from processes import ClusterError

CLIENTS = (
    ("admin", "/O=system:masters/CN=admin"),
    ("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client"),
    ("controller-manager", "/CN=system:kube-controller-manager"),
    ("scheduler", "/CN=system:kube-scheduler"),
)
_REQ_CONFIG = (
    "[req]\ndistinguished_name = dn\n[dn]\n"
    "[ca]\nbasicConstraints = critical,CA:TRUE\n"
    "keyUsage = critical,keyCertSign,cRLSign,digitalSignature\n"
    "subjectKeyIdentifier = hash\n"
)


def make_pki(pki: Path, sans: Sequence[str]) -> None:
    """Every key and certificate the control plane needs, in ``pki`` (made atomically)."""
    tmp = pki.with_name(pki.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tmp.chmod(0o700)
    cnf = tmp / "openssl.cnf"
    cnf.write_text(_REQ_CONFIG)
    _new_key(tmp / "ca.key")
    _openssl("req", "-x509", "-new", "-key", tmp / "ca.key", "-subj", "/CN=csi-driver-test-ca",
             "-days", "365", "-config", cnf, "-extensions", "ca",
             "-out", tmp / "ca.crt")  # fmt: skip
    _new_key(tmp / "sa.key")
    _openssl("pkey", "-in", tmp / "sa.key", "-pubout", "-out", tmp / "sa.pub")
    _new_cert(tmp, cnf, "apiserver", "/CN=kube-apiserver", "serverAuth", sans)
    for name, subject in CLIENTS:
        _new_cert(tmp, cnf, name, subject, "clientAuth")
    cnf.unlink()
    shutil.rmtree(pki, ignore_errors=True)
    tmp.rename(pki)


def add_client_cert(pki: Path, name: str, subject: str) -> None:
    """``pki/<name>.crt`` and ``.key``: a client certificate signed by ``pki/ca``."""
    cnf = pki / f"{name}.cnf"
    cnf.write_text(_REQ_CONFIG)
    try:
        _new_cert(pki, cnf, name, subject, "clientAuth")
    finally:
        cnf.unlink()


def write_kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    """A kubeconfig (JSON is YAML) for ``user``'s certificate in ``pki``."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "csi-test", "cluster": {
            "server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": user, "user": {
            "client-certificate": str(pki / f"{user}.crt"),
            "client-key": str(pki / f"{user}.key")}}],
        "contexts": [{"name": "csi-test", "context": {"cluster": "csi-test", "user": user}}],
        "current-context": "csi-test",
    }  # fmt: skip
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


def _openssl(*args: str | Path) -> None:
    argv = ["openssl", *map(str, args)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise ClusterError("openssl is not installed; run 'make etcd-deps'") from None
    if done.returncode != 0:
        raise ClusterError(f"{shlex.join(argv)} exited with {done.returncode}: {done.stderr}")


def _new_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    path.chmod(0o600)


def _new_cert(
    directory: Path, cnf: Path, name: str, subject: str, usage: str, sans: Sequence[str] = ()
) -> None:
    key, csr, crt = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    ext = directory / f"{name}.ext"
    lines = ["basicConstraints = critical,CA:FALSE", "keyUsage = critical,digitalSignature",
             f"extendedKeyUsage = {usage}", "authorityKeyIdentifier = keyid",
             "subjectKeyIdentifier = hash"]  # fmt: skip
    if sans:
        lines.append(f"subjectAltName = {','.join(sans)}")
    ext.write_text("\n".join(lines) + "\n")
    _new_key(key)
    try:
        _openssl("req", "-new", "-key", key, "-subj", subject, "-config", cnf, "-out", csr)
        _openssl("x509", "-req", "-in", csr, "-CA", directory / "ca.crt",
                 "-CAkey", directory / "ca.key", "-set_serial", str(random.getrandbits(63)),
                 "-days", "365", "-extfile", ext, "-out", crt)  # fmt: skip
    finally:
        ext.unlink()
        csr.unlink(missing_ok=True)
