"""``pharmatwin-hil serve``: one site's plant and PLC on Modbus TCP and/or OPC UA, on a
scaled clock, until SIGINT/SIGTERM; and the loopback admin channel behind
``pharmatwin-hil fault``.

The admin channel is a JSON-lines TCP server on 127.0.0.1 (a free port), announced in
``<state_dir>/<site>.json`` together with the protocol ports and the log file. Requests::

    {"cmd": "status"}
    {"cmd": "inject", "fault": {"kind": "sensor_bias", "target": "Tbot", "start": 0, ...}}
    {"cmd": "clear", "kind": "sensor_bias", "target": "Tbot"}

The serving process validates every injection against its site and servers itself
(:meth:`HilRig.inject`), whatever client sent it. Answers are ``{"ok": true, ...}`` or
``{"ok": false, "error": <plain sentences>, "problems": [...], "allowed": [...],
"did_you_mean": <name or null>}``; a refused fault is not held. An injection's answer gives
the fault as held (absolute start), the real ``tags`` a ``comm_bad_status`` pattern expanded
to, the ``unit`` of its magnitude or rate, and the model time ``t_model`` it was injected at.
A clear's ``target`` may be a wildcard pattern matched against the held faults' targets
(:meth:`~hil.faults.FaultSet.clear`); its answer lists the ``cleared`` faults and how many
``matched``. A clear that removes nothing answers ``ok: false``, naming what it asked for and
the faults held: nothing changed, so nothing is reported as done.

The log file (``<state_dir>/<site>.log``) gets the rig's own messages (``pharmatwin.*``) and
the servers' (``hil.servers.*``): refused writes with their reason, refused TLS clients and
OPC UA certificates, connects and disconnects. Bad start-up input (a rate or duration that is
not a finite number > 0, a busy port, an unreadable site file) is one ConfigError or
PharmaTwinError naming what is wrong, raised before anything is served.

Modbus/TCP Security: with ``modbus_tls`` (default: when the site's connection says
``modbus.tls``) the Modbus server speaks TLS and requires a client certificate issued by the
site's test-bench CA (``hil.ca_certificate``), which also signs the server certificate made on
first start in ``<state_dir>/<site>/modbus/``
(:func:`hil.servers.modbus_tls.site_tls_context`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from controller.clock import Gate, ScaledClock
from controller.errors import ConfigError, PharmaTwinError, Problem, unknown_name
from controller.outpaths import out_problem
from controller.runtime.site import Site
from hil.faultcheck import FaultRefusedError, check_clear, magnitude_unit, parse_fault
from hil.faultspec import FaultKind, FaultSpec, expand_tags
from hil.net import LOOPBACK, free_port, is_loopback
from hil.rig import HilRig
from hil.servers.base import PlcServer
from hil.site import hil_section, load_hil_site, scan_rate_problem

log = logging.getLogger("pharmatwin.hil.serve")
#: The loggers whose records go to the HIL log file.
LOGGERS = ("pharmatwin", "hil.servers")
#: the admin socket's commands (one JSON object per line, see the module docstring)
COMMANDS = ("status", "inject", "clear")


@dataclass(frozen=True)
class ServeOptions:
    rate: float = 1.0
    protocol: str | None = None  # modbus | opcua | both; default: the site's
    host: str = LOOPBACK
    allow_remote: bool = False
    modbus_port: int | None = None
    opcua_port: int | None = None
    duration: float | None = None  # process seconds
    state_dir: Path | None = None
    modbus_tls: bool | None = None  # Modbus/TCP Security; default: the site's connection's
    wrong_unit: Literal["gateway", "silent"] = "gateway"  # another unit id: 0B | no answer
    #: at the batch's end: hold the final state and keep serving until stopped (default),
    #: exit (--until-batch-end), or start the batch again (--repeat)
    at_batch_end: Literal["hold", "exit", "repeat"] = "hold"
    #: hold the HIL clock at 0 until a client's first write (the controller's first cycle
    #: writes its heartbeat), so the controller's start-up does not eat into the batch
    wait_for_controller: bool = False
    #: HOST:PORT of the rig's read-only web page (None: no page)
    ui: str | None = None

    def check(self) -> None:
        """ConfigError listing every bad option (name, bad value, what is allowed)."""
        problems = []
        for name, value in (("--rate", self.rate), ("--duration", self.duration)):
            if value is not None and not (math.isfinite(value) and value > 0):
                why = "must be a finite number > 0"
                unit = (
                    "process seconds per wall-clock second"
                    if name == "--rate"
                    else "process seconds"
                )
                problems.append(Problem("command line", name, f"{why} ({unit})", value))
        for name, port in (("--modbus-port", self.modbus_port), ("--opcua-port", self.opcua_port)):
            if port is not None and not 1 <= port <= 65535:
                problems.append(Problem("command line", name, "must be 1..65535", port))
        from hil.servers.modbus import WRONG_UNIT_CHOICES

        if self.wrong_unit not in WRONG_UNIT_CHOICES:
            why = unknown_name("wrong-unit answer", self.wrong_unit, WRONG_UNIT_CHOICES)
            problems.append(Problem("command line", "--wrong-unit", why, self.wrong_unit))
        if not is_loopback(self.host) and not self.allow_remote:
            why = "the HIL simulator binds loopback only unless --allow-remote is given"
            problems.append(Problem("command line", "--host", why, self.host))
        if problems:
            raise ConfigError(problems)


def state_dir(site: Site, override: Path | None = None) -> Path:
    if override is not None:
        return override.resolve()
    hil = hil_section(site)
    if hil is None:
        raise ConfigError([Problem(str(site.path), "hil", "the site has no 'hil' section", None)])
    return site.file(hil.state_dir).resolve()


def usable_state_dir(site: Site, override: Path | None = None) -> Path:
    """:func:`state_dir`, made: a site's ``hil.state_dir`` that cannot be a folder (a file
    is there, or its parent cannot be written) is a ConfigError naming the site file and the
    key (``--state-dir``, the override, is checked on the command line)."""
    folder = state_dir(site, override)
    why = out_problem(folder, flag="hil.state_dir") if override is None else None
    if why is not None:
        message = why.removeprefix("hil.state_dir: ")  # it names the folder it resolved to
        raise ConfigError([Problem(str(site.path), "hil.state_dir", message)])
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _ports(site: Site, opts: ServeOptions) -> dict[str, int]:
    protocol = opts.protocol or site.connection.protocol
    wanted = ["modbus", "opcua"] if protocol == "both" else [protocol]
    given = {"modbus": opts.modbus_port, "opcua": opts.opcua_port}
    out = {}
    for proto in wanted:
        port = given[proto]
        if port is None:
            port = site.connection.port if proto == site.connection.protocol else free_port()
        out[proto] = port
    return out


async def _servers(site: Site, ports: dict[str, int], opts: ServeOptions) -> list[PlcServer]:
    from hil.servers.modbus import modbus_server_for_site
    from hil.servers.modbus_tls import site_tls_context
    from hil.servers.opcua import opcua_server_for_site

    servers: list[PlcServer] = []
    folder = state_dir(site, opts.state_dir)
    if "modbus" in ports:
        tls = opts.modbus_tls if opts.modbus_tls is not None else site.connection.modbus.tls
        context = (
            await asyncio.to_thread(
                site_tls_context, site, folder / site.name / "modbus", opts.host
            )
            if tls
            else None
        )
        servers.append(
            modbus_server_for_site(
                site,
                port=ports["modbus"],
                host=opts.host,
                allow_remote=opts.allow_remote,
                tls=context,
                wrong_unit=opts.wrong_unit,
            )
        )
    if "opcua" in ports:
        servers.append(
            await opcua_server_for_site(
                site,
                port=ports["opcua"],
                host=opts.host,
                allow_remote=opts.allow_remote,
                state_dir=folder,
            )
        )
    return servers


class Admin:
    """The JSON-lines admin channel of a running rig (loopback only)."""

    def __init__(self, rig: HilRig) -> None:
        self.rig = rig

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                answer = self.answer(line)
                writer.write(json.dumps(answer, default=str).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    def answer(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError(f"a request is a JSON object with a 'cmd', not {req!r}")
            cmd = req.get("cmd")
            if cmd == "status":
                return {"ok": True, "status": self.rig.summary()}
            if cmd == "inject":
                return self._inject(req.get("fault"))
            if cmd == "clear":
                return self._clear(req.get("kind"), req.get("target"))
            return {"ok": False, "error": unknown_name("cmd", cmd, COMMANDS)}
        except FaultRefusedError as exc:
            log.warning("runtime fault refused: %s", exc)
            return exc.answer()
        except (ValueError, PharmaTwinError) as exc:
            return {"ok": False, "error": str(exc)}

    def _inject(self, raw: object) -> dict[str, Any]:
        spec = parse_fault(raw)
        held = self.rig.inject(spec)  # validated against the site and servers; may refuse
        log.warning("runtime fault injected: %s", held.model_dump())
        targets = self.rig.fault_targets
        tags = expand_tags(held.target, targets.tags) if held.kind == "comm_bad_status" else ()
        return {
            "ok": True,
            "injected": held.model_dump(),
            "tags": list(tags),
            "unit": magnitude_unit(held, targets),
            "t_model": self.rig.t_model,
            "time_unit": targets.time_unit,
        }

    def _clear(self, raw_kind: object, raw_target: object) -> dict[str, Any]:
        kind, target = _text("kind", raw_kind), _text("target", raw_target)
        check_clear(kind, target, self.rig.fault_targets)  # a typo would clear nothing
        held = self.rig.faults.faults
        removed = self.rig.faults.clear(cast("FaultKind | None", kind), target)
        log.warning("runtime clear (kind=%s, target=%s): %d fault(s)", kind, target, len(removed))
        if not removed:  # nothing changed: never an ok
            raise FaultRefusedError([_nothing_cleared(kind, target, held)])
        cleared = [f.model_dump() for f in removed]
        return {
            "ok": True,
            "cleared": cleared,
            "matched": len(removed),
            "time_unit": self.rig.fault_targets.time_unit,
        }


def _nothing_cleared(kind: str | None, target: str | None, held: Sequence[FaultSpec]) -> str:
    """Why a clear request removed nothing: what it asked for, and the faults held."""
    asked = ", ".join(
        f"{name} {value!r}" for name, value in (("kind", kind), ("target", target)) if value
    )
    if not asked:
        return "no fault is held: nothing was cleared"
    if not held:
        return f"no held fault matches {asked}: nothing was cleared (no fault is held)"
    listed = ", ".join(f"{f.kind} on {f.target!r}" for f in held)
    return f"no held fault matches {asked}: nothing was cleared; held: {listed}"


def _text(name: str, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise FaultRefusedError([f"{name} must be a string, not {value!r}"])


async def serve(site_path: Path, opts: ServeOptions, announce: Any = print) -> dict[str, Any]:
    """Run the rig until SIGINT/SIGTERM or ``opts.duration``; returns the final summary.

    ConfigError for bad options or site files, PharmaTwinError when a port cannot be listened
    on (both before anything is served).
    """
    opts.check()
    site = load_hil_site(site_path)
    # a warning, not a refusal: the rig alone may run fast (to a batch's end); a controller
    # connected to it would run on a plant that is not the one it will run (campaigns refuse)
    too_fast = scan_rate_problem(
        site, opts.rate, site.controller.sample_time, file="command line", location="--rate"
    )
    warning = None
    if too_fast is not None:
        warning = f"--rate {opts.rate:g}: {too_fast.message}; for closed-loop tests"
        announce(f"warning: {warning}")
    folder = usable_state_dir(site, opts.state_dir)
    log_path = folder / f"{site.name}.log"
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
    if warning is not None:
        log.warning("%s", warning)  # in the HIL log too, beside what the rig did
    try:
        return await _serve(site, opts, folder, log_path, announce)
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
        handler.close()


def _open_on_first_write(servers: list[Any], gate: Gate) -> None:
    """Start the clock at the first write a client makes (its first cycle's heartbeat)."""
    for server in servers:
        hook = server.write_hook

        def opening(*args: Any, _hook: Any = hook, **kw: Any) -> Any:
            if not gate.is_open:
                gate.open()
                log.info("a client wrote: the HIL clock starts")
            return _hook(*args, **kw)

        server.write_hook = opening


async def _serve(
    site: Site, opts: ServeOptions, folder: Path, log_path: Path, announce: Any
) -> dict[str, Any]:
    ports = _ports(site, opts)
    servers = await _servers(site, ports, opts)
    gate = Gate()
    if not opts.wait_for_controller:
        gate.open()
    clock = ScaledClock(opts.rate, monotonic=gate)
    rig = HilRig(site, clock, servers)
    if opts.wait_for_controller:
        _open_on_first_write(servers, gate)
    admin = Admin(rig)
    admin_server = await asyncio.start_server(admin.handle, LOOPBACK, 0)
    admin_port = admin_server.sockets[0].getsockname()[1]
    state = {
        "site": site.name,
        "pid": os.getpid(),
        "rate": opts.rate,
        "host": opts.host,
        "ports": ports,
        "admin_port": admin_port,
        "log": str(log_path),
    }
    state_file = folder / f"{site.name}.json"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    started = []
    view = None
    announced = False  # the state file is this serve's only once it wrote it
    try:
        if opts.ui is not None:
            from controller.runtime.ui.bind import parse_bind
            from hil.serve_ui import RigView

            view = RigView(parse_bind("--ui", opts.ui, allow_remote=opts.allow_remote))
            view.attach(rig)
            view.start()
            state["ui"] = view.url
        for server, (proto, port) in zip(servers, ports.items(), strict=True):
            try:
                await server.start()
            except OSError as exc:
                why = os.strerror(exc.errno).lower() if exc.errno else str(exc)
                raise PharmaTwinError(
                    f"cannot serve {proto} on {opts.host}:{port}: {why}; is another server "
                    f"running there? choose another port with --{proto}-port"
                ) from exc
            started.append(server)
        state_file.write_text(json.dumps(state, indent=2))  # announced once it answers
        announced = True
        log.info("serving %s on %s at rate %g", site.name, ports, opts.rate)
        announce(
            f"serving {site.name}: "
            + ", ".join(f"{p} on {opts.host}:{n}" for p, n in ports.items())
            + f" at rate {opts.rate:g}; admin on {LOOPBACK}:{admin_port}; log: {log_path}"
            + (f"; page: {view.url}" if view is not None else "")
        )
        rig.at_batch_end = opts.at_batch_end
        await rig.run(stop, opts.duration)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        admin_server.close()
        await admin_server.wait_closed()
        if view is not None:
            view.close()
        for server in started:
            await server.stop()
        if announced and _is_ours(state_file, admin_port):  # not a running one's (same site)
            state_file.unlink(missing_ok=True)
    summary = rig.summary()
    log.info("stopped: %s", summary)
    announce(f"stopped at t={summary['t_model']:.4g} {summary['time_unit']}; log: {log_path}")
    return summary


async def admin_request(
    site_path: Path, request: dict[str, Any], folder: Path | None = None
) -> Any:
    """Send one admin request to the rig serving ``site_path`` (found through its state file)."""
    site = load_hil_site(site_path)
    state_file = state_dir(site, folder) / f"{site.name}.json"
    if not state_file.is_file():
        raise PharmaTwinError(
            f"no running 'pharmatwin-hil serve' for {site.name} (no {state_file})"
        )
    port = _admin_port(state_file)
    try:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
    except OSError as exc:  # serve was killed (-9) and left its state file behind
        raise PharmaTwinError(
            f"no serve answers on {LOOPBACK}:{port}; the state file {state_file} is stale "
            "(remove it, or start serve again)"
        ) from exc
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        return json.loads(await reader.readline())
    finally:
        writer.close()


def _is_ours(state_file: Path, admin_port: int) -> bool:
    """The state file still announces this serve (another of the same site may since have
    written its own over it)."""
    try:
        return bool(json.loads(state_file.read_text(encoding="utf-8"))["admin_port"] == admin_port)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _admin_port(state_file: Path) -> int:
    """The admin port a state file names; PharmaTwinError when the file is not serve's."""
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = f"not UTF-8 JSON ({exc})"
    else:
        port = state.get("admin_port") if isinstance(state, dict) else None
        if isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535:
            return port
        got = f"'admin_port': {port!r}" if isinstance(state, dict) else type(state).__name__
        why = f"not a JSON object with 'admin_port': 1..65535 (got {got})"
    raise PharmaTwinError(
        f"the state file {state_file} is {why}, so not one 'pharmatwin-hil serve' wrote "
        "(remove it, or start serve again)"
    )
