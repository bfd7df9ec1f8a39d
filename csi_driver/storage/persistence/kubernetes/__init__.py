"""A metadata store in Kubernetes custom resources, for controllers run in a cluster.

Selected by ``{'storage': 'kubernetes', 'namespace': NS, 'kubeconfig': PATH}``
(no ``kubeconfig``: the pod's service account). The ``kubernetes`` client is
imported only by this package (in ``api``), and only when a store is built, so
the other stores do not pay for it. The CRDs are in ``deploy/crds/`` and the
RBAC the controller needs in ``deploy/crds/README.md``.

Objects. API group ``metadata.csi-driver.dev``, version ``v1alpha1``, namespaced:
``CsiVolume``, ``CsiSnapshot``, ``CsiConnection`` (one object per record) and
``CsiKeyValue`` (one per key of the key/value pairs, and the name claims below).
The record is ``spec.record``, its exact JSON text; ``spec`` also has typed
copies of what the store filters and ``kubectl get`` prints (``id``,
``backend``, ``volumeId``, ``name``, ``size``, ``status``, ``host``), the
first-stored position ``seq`` and ``writeId``, the id of the store call that
wrote this version. Nothing is kept in annotations.

Object names. An id that is a DNS label (<= 63 of ``[a-z0-9-]``, alphanumeric at
both ends: every UUID) is the object's name, unless it starts with ``h-``;
any other id is named ``h-`` and 40 hex digits of its SHA-256. The real id is
``spec.id``, and every read checks it. Key/value objects are named ``kv-`` and
the hash of the key, name claims ``nc-v-``/``nc-s-`` and the hash of the name.

Labels (``metadata.csi-driver.dev/backend``, ``.../volume``, ``.../name``) make
the API server do the filtering. A value that is a valid label value (and does
not start with ``h.``) is used as is, so ``kubectl get csivolumes -l
metadata.csi-driver.dev/backend=lvm`` works; any other value is ``h.`` and 40
hex digits of its SHA-256. Records are checked against the filter after
listing, so a collision of hashes cannot give a wrong answer.

Order. Results of ``get_*`` come in ``spec.seq`` order: the creation time in
nanoseconds, made strictly increasing within a process and kept when a record is
replaced (a replace is a read-modify-write under ``resourceVersion``). Records
created by different processes are ordered by their hosts' clocks.

Paging. ``list_page`` is keyset paging over object names, which etcd keeps in
order: the store's token holds the last object name, and the next page is a
``limit``-ed list with a continue token the store builds to start just after
that name at the newest resource version (the form of continue token the API
server itself hands out when an old one has expired: ``rv`` -1). Each page is
therefore fresh, costs O(page) in what crosses the wire, and a record present
throughout is listed once. Pages are in id order for ids that are object names
(every id the library makes); ids named by their hash come in hash order.
Filters are label selectors, applied by the API server as it reads.

Reads. ``get_*`` by id is a GET of one object (a quorum read). Filtered reads
(and ``get_values``, ``connections_of``) are label-selected lists served from
the API server's watch cache once it holds the newest version of an object of
that kind this process wrote or read: each process reads its own writes, and
another process's writes show up once the watch cache has them (milliseconds; a
controller built on informers sees the cluster the same way). A quorum list
would make the API server read and decode every object of the kind from etcd
(1.5 s at 10 000 volumes with etcd 3.4; etcd >= 3.5.13 lets it use the cache).
While the cache is being filled (new CRD, restarted API server) reads go to etcd,
and so do filtered reads of a kind this process deleted from, until it writes that
kind again: a delete answers with a Status, not the version it made, so no cache
version is known to hold it (asking for the server's present revision instead makes
the cache wait for an event of that kind: 3 s, then 504).

Writes. A record write is a create (``POST``), or a replace (``PUT``) with the
``resourceVersion`` of the version read; on 409 the store re-reads and tries
again, at most ``conflict_retries`` times, then raises ``StoreError``. The last
version this process wrote or read of an object is cached, so a replace is
usually one request. Each call writes its own ``writeId``: when the answer to a
write is lost (a connection cut after the request left, a timeout, a 5xx), the
store reads the object back, and the ``writeId`` says whether it was applied.

Atomicity. Kubernetes has no transaction over several objects. ``write`` stores
its records one at a time (validated first, duplicates merged); when one fails,
the records it already changed are put back as they were (deleted if new),
each only if it still carries this call's ``writeId``. When the server is
unreachable, the undo waits in the store and runs at its next call that reaches
the server, before anything else; until then other readers can see the
half-applied batch. A process that dies with undo pending, or in the middle of a
batch, leaves the batch half-applied (the library's two multi-record writes: at the
end of connect, which then leaves the connection ``connecting``, and at the end of
disconnect, whose removal comes after its puts and so leaves the connection
``disconnecting``; recovery finishes or undoes both). A single-record write (most
of them) is one object write and is all-or-nothing. ``delete`` of a record whose
deletion is in doubt is undone the same way (the record is re-created, position
kept).

Unique names. ``create_unique`` takes a claim: a ``CsiKeyValue`` named from the
(kind, name) hash, created with ``POST`` (the API server's 409 makes one creator
win), holding the winner's id. The winner then creates the record and marks the
claim bound (``PUT`` with the claim's resourceVersion). A loser reads the claim:
bound to a record that holds the name, it raises ``NameInUse`` with that id.
A claim that stays unbound and unchanged for ``claim_timeout`` seconds (its
creator died between the two writes) or that is bound to a record that is gone
or renamed is deleted (precondition: its resourceVersion) and the loser starts
again; a winner whose claim was so taken over deletes its record and starts
again, so one record remains. Records written with ``write`` that hold the
name count too (a list by the name label comes first; such a record written by
another process in the last milliseconds can be missed, see Reads: names stay
unique among ``create_unique`` callers whatever the timing). Deleting or
renaming a record releases its claim.

Errors. An unreachable server (refused connection, timeout after ``timeout``
seconds, 429, 5xx) raises ``StoreUnavailable``; the client makes no retries of
its own. A 403 raises ``StoreError`` naming the verb and resource the Role
lacks; missing CRDs or namespace raise ``StoreError`` saying so. Record contents
are never logged: connection records can hold CHAP secrets.

Modules. ``names``: object names, label values and selectors, the specs and
labels objects are written with, continue tokens. ``api``: the HTTP calls
through the ``kubernetes`` client, how their failures map to
``StoreUnavailable``/``StoreError``, the client and kubeconfig loading, reads and
the object cache. ``undo``: writes of one object that say how to undo them, and
the undo of calls whose writes are in doubt. ``claims``: ``create_unique`` and its
name claims. ``store``: ``KubernetesStore``, the record and key/value calls.
"""

from __future__ import annotations

from csi_driver.storage.persistence.kubernetes.names import GROUP, label_value, object_name
from csi_driver.storage.persistence.kubernetes.store import KubernetesStore

__all__ = ["GROUP", "KubernetesStore", "label_value", "object_name"]
