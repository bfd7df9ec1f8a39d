"""A metadata store on an etcd v3 cluster, shared by every replica of the plugin.

Selected by ``persistence_config={'storage': 'etcd', 'endpoints': [...],
'prefix': '/csi-driver/', 'timeout': 5, 'user': ..., 'password': ...,
'ca_cert': ..., 'cert_cert': ..., 'cert_key': ...}``.

Client: the gRPC stubs and protobuf messages of ``cslab-etcd3`` (``etcd3.etcdrpc``;
the original ``etcd3`` 0.12 does not import with current protobuf). Its client
class is not used: it locks a failed endpoint out for 300 s, never renews an
expired auth token and cannot put a revision, limit or sort on the reads of a
transaction. This package builds the requests itself and keeps one gRPC channel
per endpoint.

Key layout under the prefix P (``/csi-driver/`` by default; every key the store
touches starts with it, so stores with different prefixes never see each other):

- ``P{kind}/rec/{id}``: the record, as ``b"{pos}\\n"`` + its JSON text;
- ``P{kind}/by-backend/{backend}/{id}``, ``P{kind}/by-volume/{volume_id}/{id}``
  (snapshots, connections) and ``P{kind}/by-name/{name}/{id}`` (volumes and
  snapshots whose name is not None): index keys with an empty value, present
  exactly while the record holds that value;
- ``Pkv/{key}``: the key/value pairs; ``Pmeta/layout``: the layout version (1).

``{kind}`` is ``volume``, ``snapshot`` or ``connection``. Ids, names, backends
and keys are arbitrary strings (``/``, NUL, lone surrogates): they are written
as UTF-8 (surrogatepass) with ``.`` escaped as ``.2E`` and ``/`` as ``.2F``.
So no escaped value holds a ``/`` (``by-backend/a/`` never matches backend
``a/b``), decoding is unambiguous, and the escape keeps order: ``.`` and ``/``
are the adjacent code points 0x2E and 0x2F and both escapes start with ``.``,
so for any strings a < b (Python's code point order, which UTF-8 byte order
equals) the escaped bytes compare the same way. ``list_page`` can therefore
page in id order by ranging over keys: records ``P{kind}/rec/`` (or an index
prefix) from just after the last id, ``limit`` keys, which etcd answers without
reading the rest of the range.

Order of ``get_*`` results ("first stored", replacing keeps the place): etcd
keeps a key's ``create_revision`` across puts and gives a new one after a
delete. Keys created in one transaction share a revision, so ``{pos}`` (the
record's place in the write that created it, kept on replace) breaks the tie:
results are sorted by (create_revision, pos, key). A filtered read uses one
index (name, else volume, else backend) and checks the other filters on the
records.

Writes are etcd transactions, one per call, so a failed call (including a lost
server) leaves nothing half-written:

- ``write``/``delete`` compare each record key's ``mod_revision`` with what the
  store last saw of it (0: absent) and, in the same transaction, put the
  records, delete the index keys of values that changed and put the new ones
  (all of them in a grouped write, see below).
  When a compare fails, the failure branch returns the current records and
  the transaction is built again from them (bounded retries): a concurrent
  writer can never make the store drop or leave a stale index key. The last
  seen revision of recently written or read records is cached, so an update
  usually takes one round trip.
- ``create_unique`` compares ``version == 0`` over the whole range
  ``P{kind}/by-name/{name}/`` (no record holds the name, however it was
  written) and over the record key, and creates the record with its index
  keys in the same transaction; the failure branch names the holder.

Limits of the etcd server apply to one call: a transaction holds at most
``--max-txn-ops`` operations (128 by default; give the server's value as the
store option ``max_txn_ops`` if it differs) and a request at most
``--max-request-bytes`` (1.5 MiB). A record costs 2 to 4 operations (record,
backend, volume and name index keys), a replaced one whose indexed values
changed up to 7. A write too big for one flat transaction is cut into nested
transactions (etcd checks the limit per level): up to ``max_txn_ops/4`` groups
of adjacent keys of one kind, each a nested transaction of up to 3/4 of
``max_txn_ops`` operations under one compare of its key range ("nothing in it
changed since the revision the batch was read at"). That is still one
transaction, applied at one revision: several hundred records per ``write()``
with the defaults. Past the limits a write fails with ``StoreError`` naming
the flag, having written nothing.

Multi-key reads (a filtered ``get_*``, a filtered page, ``connections_of``) read
the index and then the records at the same revision, so they see one
consistent state. Every write leaves a revision behind: run etcd with
``--auto-compaction-retention`` (e.g. ``1h``) or its database grows until the
space quota stops all writes.

Connections: the endpoints are tried in order, a failing one makes the next one
current. A request that reaches no endpoint is retried for ``timeout`` seconds,
then fails with ``StoreUnavailable``, nothing applied. A write whose request may
have reached the server before the connection broke (etcd stopped while it was
applying it: etcd applies such a committed write when it starts again) is sent
again until the server answers, for up to 60 s: the transaction's compare makes
the resend safe, and its answer is the truth (a resend finds the first copy
applied and succeeds). Only past those 60 s does ``StoreUnavailable`` say the
outcome is unknown. With ``user`` and
``password`` the store authenticates and renews an expired token. Neither the
password nor record contents (CHAP secrets) are ever logged or put in an
error.

Modules: ``keys`` (the key layout and its escaping), ``transactions`` (the
operations and compares of a write, grouped into nested transactions when it is
big), ``client`` (endpoints, channels, TLS, auth, resends and error mapping) and
``store`` (``EtcdStore``: options, reads, writes, unique names, key/values).
"""

try:
    from etcd3 import etcdrpc as _rpc  # noqa: F401  # checked first: say which package is missing
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(f"the etcd metadata store needs the cslab-etcd3 package: {exc}") from exc

from csi_driver.storage.persistence.etcd.keys import escape, unescape
from csi_driver.storage.persistence.etcd.store import EtcdStore

__all__ = ["EtcdStore", "escape", "unescape"]
