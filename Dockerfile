# The CSI plugin image, one for the controller and the node (`make images`; how and why:
# e2e/images/README.md). Built by buildah from a locally debootstrapped base, e.g.
#   buildah bud --layers --secret id=pipconf,src=PIP_CONF --secret id=pipca,src=CA_BUNDLE .
# pip reaches the package index only through those two secrets (a pip.conf and the CA
# bundle the host's pip trusts): they exist during a RUN only, never in a layer.
#
# hadolint (`make images` fails on any finding, `--failure-threshold style`) ignores here:
# DL3008 (apt versions unpinned): the versions are those of the base image's Debian
#   suite; exact Debian revisions leave the mirror with every point or security release,
#   so pinning them would break the build without making it more reproducible.
# DL3059 (consecutive RUNs): kept apart on purpose, each is a cache layer with its own
#   inputs (the dependency list, the pinned tools, the source).
ARG BASE=localhost/debian:bookworm

# ---- deps: the runtime venv /opt/venv with the dependencies; /opt/codegen (never shipped)
# with grpcio-tools and the build backend. Cached until pyproject.toml or the constraints change.
FROM ${BASE} AS deps
# ARG, not ENV: keeps it out of the image configuration.
ARG DEBIAN_FRONTEND=noninteractive
# The Cinder release: constraints.txt pins the newest, constraints-cinderNN.txt an older
# supported one (`make images CINDER=NN`).
ARG CONSTRAINTS=constraints.txt
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
# hadolint ignore=DL3059
RUN python3 -m venv /opt/venv && python3 -m venv /opt/codegen
WORKDIR /src
COPY pyproject.toml ${CONSTRAINTS} ./
RUN python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); \
open("/tmp/requirements.txt", "w").write("\n".join(p["project"]["dependencies"])); \
open("/tmp/build-requires.txt", "w").write("\n".join(p["build-system"]["requires"]))'
# Cinder's own unit tests (39 MB) are never imported at run time: left out.
# hadolint ignore=DL3059
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=pipca \
    PIP_CONFIG_FILE=/run/secrets/pipconf /opt/venv/bin/pip install --no-cache-dir \
      -c "${CONSTRAINTS}" -r /tmp/requirements.txt \
 && rm -rf /opt/venv/lib/python3*/site-packages/cinder/tests
# hadolint ignore=DL3059
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=pipca \
    PIP_CONFIG_FILE=/run/secrets/pipconf /opt/codegen/bin/pip install --no-cache-dir \
      -c "${CONSTRAINTS}" grpcio-tools -r /tmp/build-requires.txt

# ---- wheel: the project with its generated gRPC stubs, built offline ----
FROM deps AS wheel
COPY README.md ./
COPY proto ./proto
COPY csi_driver ./csi_driver
RUN /opt/codegen/bin/python proto/generate.py \
 && /opt/codegen/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation -w /wheel .

# ---- runtime: Python and the tools os-brick and the node code run, from Debian ----
FROM ${BASE}
ARG DEBIAN_FRONTEND=noninteractive
# mount (mount, umount, losetup) and util-linux (blkid, blockdev) are already in minbase;
# naming them keeps this the node code's complete list.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
      open-iscsi nvme-cli multipath-tools lsscsi e2fsprogs xfsprogs util-linux mount \
      ceph-common \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log
# The venv's python is a symlink to /usr/bin/python3.11: same base, same interpreter. The
# dependencies and the project are separate layers: a source edit rebuilds only the last.
COPY --from=deps /opt/venv /opt/venv
# (COPY, not RUN --mount=from=wheel: buildah 1.28 reuses such a RUN's cached layer even
# when the wheel changed.)
COPY --from=wheel /wheel /tmp/wheel
RUN /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps /tmp/wheel/*.whl \
 && rm -rf /tmp/wheel
# Cinder's RBD driver imports rados/rbd: PyPI has none, Debian's (ceph-common pulls them
# in) are built for this python3. The venv sees those two modules only, not the rest of
# Debian's dist-packages (as `make ceph-deps` does on a host).
# hadolint ignore=DL3059
RUN mkdir /opt/venv/ceph-bindings \
 && ln -s /usr/lib/python3/dist-packages/rados.cpython-*.so \
      /usr/lib/python3/dist-packages/rbd.cpython-*.so /opt/venv/ceph-bindings/ \
 && /opt/venv/bin/python -c 'import pathlib, site; \
pathlib.Path(site.getsitepackages()[0], "csi-driver-ceph-bindings.pth").write_text("/opt/venv/ceph-bindings\n")' \
 && /opt/venv/bin/python -c 'import rados, rbd'
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENTRYPOINT ["/opt/venv/bin/csi-driver"]
