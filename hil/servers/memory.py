"""The in-memory PLC "server": the HIL rig's PLC image as a tag table, with no network.

The fast mode of a campaign (``--mode fast``) runs the same rig (true plant, virtual PLC,
faults) and the same runtime (supervisor, estimator, MPC, safety, audit) as the HIL mode; only
the port and the clock differ. This server is the port's other end: the rig publishes the PLC
image into a :class:`~controller.ports.memory.TagTable`, and the controller's
:class:`~controller.ports.memory.MemoryPort` reads and writes it. Writes go through the PLC's
range check (``write_check``) and then its ``write_hook``, as they do over Modbus and OPC UA.

Communication faults, as far as they mean anything without a network:

* ``bad_tags``: the tags read with bad quality (value NaN); writes of them are refused, as
  Modbus (exception 04) and OPC UA (BadCommunicationError) refuse them;
* ``stop``/``start`` (``comm_restart``) and ``drop_connections`` (``comm_drop``): the port's
  next operations fail with :class:`~controller.errors.PortConnectError`, as a client whose
  connection was dropped would see, until the server is back (drop: the next operation);
* ``latency`` (``comm_latency``): wall-clock seconds added to every answer. The fast mode has
  no wall clock (a stepped clock moves process time only when the driver says so), so this
  server cannot delay anything: the kind is in :attr:`unsupported_faults` (the rig refuses
  such a fault at load and at injection) and a non-zero ``latency`` raises ValueError.

Values are stored in engineering units, unquantized (no register codec). A publication is
laid into the table when it is next looked at (the port's read or write, :meth:`value`,
:meth:`MemoryPlcServer.flush`), each value with the quality and time of its own publication:
what a reader sees is what publishing every scan at once would give.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import ClassVar

from controller.clock import Clock
from controller.errors import PortConnectError
from controller.ports.base import Quality, Snapshot, TagValue, WriteReport
from controller.ports.memory import MemoryPort, TagTable, table_from_tag_map
from controller.tags import TagMap
from hil.servers.base import PlcServer, WriteHook

_NONE: frozenset[str] = frozenset()
#: publications kept at most before they are laid into the table (a PLC nobody reads)
_MAX_PENDING = 32


class MemoryPlcServer(PlcServer):
    """A PLC image in memory, laid out from a tag map."""

    unsupported_faults: ClassVar[Mapping[str, str]] = {
        "comm_latency": (
            "the in-memory PLC of the fast mode runs on a stepped clock, with no wall-clock "
            "time to delay its answers by; run this case in hil mode (Modbus TCP or OPC UA)"
        )
    }

    def __init__(self, tags: TagMap, clock: Clock) -> None:
        self.tags = tags
        self.clock = clock
        self.table: TagTable = table_from_tag_map(tags)
        self.write_hook: WriteHook | None = None
        self.write_check: WriteHook | None = None
        self._latency = 0.0
        self.bad_tags = {}
        self.listening = False
        self._dropped = False
        self.table.write_check = self._check
        self.table.write_hook = self._hook
        #: publications not yet laid into the table: (values, bad, process time)
        self._pending: list[tuple[dict[str, float], frozenset[str], float]] = []

    @property
    def latency(self) -> float:
        """Always 0: see the module's notes on ``comm_latency``."""
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        if seconds != 0.0:
            raise ValueError(f"latency {seconds:g} s: {self.unsupported_faults['comm_latency']}")
        self._latency = 0.0

    def _check(self, tag: str, value: float) -> str | None:
        if tag in self.bad_tags:
            return f"{tag}: {self.bad_tags[tag]} (bad status)"
        return self.write_check(tag, value) if self.write_check is not None else None

    def _hook(self, tag: str, value: float) -> str | None:
        return self.write_hook(tag, value) if self.write_hook is not None else None

    async def start(self) -> None:
        self.listening = True

    async def stop(self) -> None:
        self.listening = False
        self._dropped = True

    async def drop_connections(self) -> None:
        self._dropped = True

    async def publish(
        self,
        values: Mapping[str, float],
        *,
        bad: Collection[str] = (),
        source_time: datetime | None = None,
    ) -> None:
        # kept as given and laid into the table when it is next looked at (a read, a write,
        # :meth:`value`): the fast mode publishes every scan, the controller reads once a
        # sample; each value keeps the time of the publication that set it
        self._pending.append((dict(values), frozenset(bad) if bad else _NONE, self.clock.now()))
        if len(self._pending) >= _MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        """Lay the pending publications into the table: each tag gets its latest value, of the
        quality and the time of the publication that set it (as if published one by one)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        table = self.table.values
        good, poor = Quality.GOOD, Quality.BAD
        done: set[str] = set()
        for values, bad, now in reversed(pending):
            for tag, v in values.items():
                if tag in done or tag not in table:
                    continue
                done.add(tag)
                table[tag] = TagValue(float(v), poor if tag in bad else good, now, now)

    def value(self, tag: str) -> float:
        self.flush()
        return self.table.current(tag)

    def port(self) -> MemoryPort:
        """The controller's side: a port onto this PLC image."""
        return _ServerPort(self)

    def _connection(self) -> None:
        """Raise as a client of a stopped server, or of a dropped connection, would."""
        if not self.listening:
            raise PortConnectError("the PLC is not answering (server stopped)")
        if self._dropped:
            self._dropped = False
            raise PortConnectError("the PLC dropped the connection")


class _ServerPort(MemoryPort):
    def __init__(self, server: MemoryPlcServer) -> None:
        super().__init__(server.table, server.clock)
        self.server = server

    async def read(self, tags: Iterable[str]) -> Snapshot:
        self.server._connection()
        self.server.flush()
        snap = await super().read(tags)
        bad = self.server.bad_tags
        if not bad:
            return snap
        values = {
            t: TagValue(math.nan, Quality.BAD, v.source_time, v.read_time, bad[t])
            if t in bad
            else v
            for t, v in snap.values.items()
        }
        return Snapshot(values, snap.read_time)

    async def write(self, values: Mapping[str, float]) -> WriteReport:
        self.server._connection()
        self.server.flush()  # the publications before the write come before it
        return await super().write(values)
