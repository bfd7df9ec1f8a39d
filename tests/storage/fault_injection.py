"""Deliberately misbehaving Cinder drivers for the storage tests (fault injection).

Every class here is a *fake on purpose*: a subclass of the real ``FileDriver`` that
does exactly what the real driver does, except for one behaviour injected so a
test can watch how the library reacts to it. Nothing else in the tests is faked.

How the tests load these classes
--------------------------------
``tests`` is not a package and pytest runs with ``--import-mode=importlib``, which
does not put test directories on ``sys.path``. ``tests/storage/conftest.py``
therefore *appends* this directory, ``tests/storage``, to ``sys.path``; a backend
then names a class here with the
plain dotted path the library hands to ``oslo_utils.importutils.import_class``::

    storage.Backend(volume_backend_name='x',
                    volume_driver='fault_injection.FaultInjectingFileDriver', ...)

The module is imported lazily, by the library, when such a backend is configured:
importing it at test-collection time would import Cinder before the library's
Cinder adapter has prepared the process (threading mode, object registry).

Faults
------
``FaultInjectingFileDriver`` fails a driver method when either

- the backend option ``fault_inject_operations`` (a list of method names) names
  it: the fault is there for the whole life of the backend; or
- the backend option ``fault_inject_flag_dir`` is set and a file named after the
  method exists in that directory: the test switches the fault on and off while
  the backend runs (``touch``/``unlink`` of the flag file).

The failure is ``cinder.exception.VolumeBackendAPIException`` raised *before*
the real method runs, as a real driver raises when its array refuses a request.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from cinder import exception
from cinder.volume import volume_utils
from oslo_config import cfg

from csi_driver.storage.drivers.file import FileDriver

INJECTED = "injected fault"

fault_opts = [
    cfg.ListOpt(
        "fault_inject_operations",
        default=[],
        help="Driver methods that always fail (fault injection for tests).",
    ),
    cfg.StrOpt(
        "fault_inject_flag_dir",
        help="Directory whose files, named after driver methods, make them fail.",
    ),
]

probe_opts = [
    cfg.StrOpt(
        "probe_default_volumes_dir",
        help="Directory SetDefaultProbeFileDriver installs as file_volumes_dir default.",
    ),
]


class FaultInjectingFileDriver(FileDriver):
    """FileDriver whose methods fail on demand (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(fault_opts)

    def _maybe_fail(self, method: str) -> None:
        always = self.configuration.safe_get("fault_inject_operations") or []
        flag_dir = self.configuration.safe_get("fault_inject_flag_dir")
        flagged = bool(flag_dir) and os.path.exists(os.path.join(flag_dir, method))
        if method in always or flagged:
            raise exception.VolumeBackendAPIException(
                data=f"{INJECTED}: {method} on {self.backend_name}"
            )

    def create_volume(self, volume: Any) -> Any:
        self._maybe_fail("create_volume")
        return super().create_volume(volume)

    def create_cloned_volume(self, volume: Any, src_vref: Any) -> Any:
        self._maybe_fail("create_cloned_volume")
        return super().create_cloned_volume(volume, src_vref)

    def create_volume_from_snapshot(self, volume: Any, snapshot: Any) -> Any:
        self._maybe_fail("create_volume_from_snapshot")
        return super().create_volume_from_snapshot(volume, snapshot)

    def delete_volume(self, volume: Any) -> Any:
        self._maybe_fail("delete_volume")
        return super().delete_volume(volume)

    def extend_volume(self, volume: Any, new_size: int) -> Any:
        self._maybe_fail("extend_volume")
        return super().extend_volume(volume, new_size)

    def create_snapshot(self, snapshot: Any) -> Any:
        self._maybe_fail("create_snapshot")
        return super().create_snapshot(snapshot)

    def delete_snapshot(self, snapshot: Any) -> Any:
        self._maybe_fail("delete_snapshot")
        return super().delete_snapshot(snapshot)

    def initialize_connection(self, volume: Any, connector: Any) -> dict[str, Any]:
        self._maybe_fail("initialize_connection")
        return super().initialize_connection(volume, connector)

    def terminate_connection(self, volume: Any, connector: Any, **kwargs: Any) -> None:
        self._maybe_fail("terminate_connection")
        return super().terminate_connection(volume, connector, **kwargs)


class SetDefaultProbeFileDriver(FileDriver):
    """Injects the RBD driver's habit: ``do_setup`` fills an unset option with
    ``configuration.set_default`` (RBD does it for ``rbd_secret_uuid``).

    In Cinder ``set_default`` writes to the ``[backend_defaults]`` group shared by
    every backend, so a second backend of this driver would find the first one's
    value already "set" and use it. Here the value is ``probe_default_volumes_dir``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(probe_opts)

    def do_setup(self, context: Any) -> None:
        if not self.configuration.safe_get("file_volumes_dir"):
            self.configuration.set_default(
                "file_volumes_dir", self.configuration.safe_get("probe_default_volumes_dir")
            )
        super().do_setup(context)


class UnservedDbCallFileDriver(FileDriver):
    """Injects a database call no standalone host serves: ``create_volume`` first
    asks ``cinder.db.api.service_get_all`` (as a scheduler-minded driver might)."""

    def create_volume(self, volume: Any) -> Any:
        self.db.service_get_all(volume._context)
        return super().create_volume(volume)


class DbShimProbeFileDriver(FileDriver):
    """Injects the database writes real drivers make, to watch where they land.

    - ``create_volume`` saves ``provider_location`` through ``volume.save()`` (which
      calls ``cinder.db.api.volume_update``) and ``provider_id`` through
      ``self.db.volume_update`` directly, as iSCSI/FC drivers do;
    - ``initialize_connection`` records, per initiator, the first volume it was
      given (``driver_initiator_data_insert_by_key``; a duplicate key raises
      ``DriverInitiatorDataExists``, which it ignores as real drivers do) and
      returns everything stored for that initiator (``driver_initiator_data_get``)
      in the connection info under ``data['initiator_data']``.
    """

    NAMESPACE = "DbShimProbeFileDriver"
    SAVED_LOCATION = "probe-location-from-volume.save"
    UPDATED_PROVIDER_ID = "probe-id-from-db.volume_update"

    def create_volume(self, volume: Any) -> Any:
        super().create_volume(volume)
        volume.provider_location = self.SAVED_LOCATION
        volume.save()
        self.db.volume_update(volume._context, volume.id, {"provider_id": self.UPDATED_PROVIDER_ID})

    def initialize_connection(self, volume: Any, connector: Any) -> dict[str, Any]:
        info = super().initialize_connection(volume, connector)
        context = volume._context
        initiator = connector["initiator"]
        with contextlib.suppress(exception.DriverInitiatorDataExists):
            self.db.driver_initiator_data_insert_by_key(
                context, initiator, self.NAMESPACE, "first_volume", volume.id
            )
        rows = self.db.driver_initiator_data_get(context, initiator, self.NAMESPACE)
        info["data"]["initiator_data"] = {row.key: row.value for row in rows}
        return info


class ChapSecretInjectingFileDriver(FileDriver):
    """Injects CHAP credentials the way iSCSI target helpers hand them out:
    ``create_export`` invents a random secret and returns it in ``provider_auth``
    (``'CHAP <user> <secret>'``); ``initialize_connection`` puts it into the
    connection info as ``auth_method``/``auth_username``/``auth_password``."""

    CHAP_USER = "csi-chap-user"

    def create_export(self, context: Any, volume: Any, connector: Any) -> dict[str, Any]:
        secret = "Chap-" + volume_utils.generate_password(length=20)
        return {"provider_auth": f"CHAP {self.CHAP_USER} {secret}"}

    def initialize_connection(self, volume: Any, connector: Any) -> dict[str, Any]:
        info = super().initialize_connection(volume, connector)
        method, user, secret = volume.provider_auth.split()
        info["data"].update(auth_method=method, auth_username=user, auth_password=secret)
        return info


class BusyOnDeleteFileDriver(FaultInjectingFileDriver):
    """FileDriver that answers deletes with Cinder's "is busy" while a flag file says so.

    Arrays refuse to delete a volume or snapshot that something still uses (RBD
    when a clone cannot be flattened); Cinder then keeps the resource as it was.
    The flag is a file named ``busy`` in ``fault_inject_flag_dir``.
    """

    def _busy(self) -> bool:
        flag_dir = self.configuration.safe_get("fault_inject_flag_dir")
        return bool(flag_dir) and os.path.exists(os.path.join(flag_dir, "busy"))

    def delete_volume(self, volume: Any) -> None:
        if self._busy():
            raise exception.VolumeIsBusy(volume_name=volume.name)
        super().delete_volume(volume)

    def delete_snapshot(self, snapshot: Any) -> None:
        if self._busy():
            raise exception.SnapshotIsBusy(snapshot_name=snapshot.name)
        super().delete_snapshot(snapshot)


slow_opts = [
    cfg.ListOpt(
        "fault_slow_operations",
        default=[],
        help="Driver methods that sleep before running (fault injection for tests).",
    ),
    cfg.FloatOpt(
        "fault_slow_seconds",
        default=0.0,
        help="How long each slowed method sleeps.",
    ),
    cfg.StrOpt(
        "fault_slow_marker_dir",
        help="Directory where a slowed method touches a file named after itself as its "
        "sleep begins, so a test knows the call has reached the driver.",
    ),
    cfg.BoolOpt(
        "fault_slow_once",
        default=False,
        help="Sleep only while the method's marker file does not exist yet: the first "
        "call hangs, the retry after a restart runs at full speed.",
    ),
]


class SlowFileDriver(FaultInjectingFileDriver):
    """FileDriver whose named methods hang for a while (fault injection, a fake on
    purpose): an array that takes minutes to answer, to watch how the plugin stops
    while a driver call is still running, or to kill it in the middle of one.

    It hooks the same driver methods as ``FaultInjectingFileDriver``.
    ``fault_slow_operations`` names the methods, ``fault_slow_seconds`` the sleep before
    the real method runs, and ``fault_slow_marker_dir``, if set, gets a file named after
    the method when the sleep begins; with ``fault_slow_once`` a method whose marker
    exists runs at full speed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(slow_opts)

    def _maybe_fail(self, method: str) -> None:
        self._maybe_sleep(method)
        super()._maybe_fail(method)

    def _maybe_sleep(self, method: str) -> None:
        if method not in (self.configuration.safe_get("fault_slow_operations") or []):
            return
        marker_dir = self.configuration.safe_get("fault_slow_marker_dir")
        once = self.configuration.safe_get("fault_slow_once")
        if marker_dir and once and os.path.exists(os.path.join(marker_dir, method)):
            return
        if marker_dir:
            os.makedirs(marker_dir, exist_ok=True)
            with open(os.path.join(marker_dir, method), "a", encoding="utf-8"):
                pass
        time.sleep(self.configuration.safe_get("fault_slow_seconds") or 0.0)


gate_opts = [
    cfg.StrOpt(
        "fault_setup_gate_dir",
        help="Directory in which do_setup announces itself (file 'waiting') and waits for "
        "the test's word: a file 'open' (set up) or 'fail' (raise).",
    ),
]
#: Seconds a gated do_setup waits for the test's word at most, so a test that died
#: leaves no process waiting forever.
GATE_TIMEOUT = 300.0


class GatedSetupFileDriver(FileDriver):
    """FileDriver whose ``do_setup`` waits for the test (fault injection, a fake on
    purpose): a backend slow to start, as an array that takes its time to answer, so a
    test can watch the plugin serve while its backends start.

    ``do_setup`` touches ``waiting`` in ``fault_setup_gate_dir``, then waits until the
    test creates ``open`` there (it then sets up as the FileDriver does) or ``fail`` (it
    raises as a driver that cannot reach its array).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(gate_opts)

    def do_setup(self, context: Any) -> None:
        gate = self.configuration.safe_get("fault_setup_gate_dir")
        os.makedirs(gate, exist_ok=True)
        with open(os.path.join(gate, "waiting"), "a", encoding="utf-8"):
            pass
        deadline = time.monotonic() + GATE_TIMEOUT
        while not os.path.exists(os.path.join(gate, "open")):
            if os.path.exists(os.path.join(gate, "fail")) or time.monotonic() > deadline:
                raise exception.VolumeBackendAPIException(data=f"{INJECTED}: array unreachable")
            time.sleep(0.02)
        super().do_setup(context)
