"""The process runtime: functions run in child processes that dial back over a private socket.

Channels come from the `CommunicationFactory`, like every other runtime's: the process
strategy (Unix socket, then TCP on loopback) is walked by listen-and-accept connectors (see
`spear.channel.rendezvous`). For each attempt the host opens one endpoint of its own — a Unix
socket in a 0700 directory (the socket itself 0600), or TCP on 127.0.0.1 with an ephemeral
port — and starts the child with the endpoint, its instance id and a fresh token in its
environment (`spear.protocol.environment`). The first connection that presents the token
within the authentication timeout becomes the instance's channel; connections that say
anything else first, present a wrong token or stay silent are closed without disturbing the
wait for the right one. The listener is closed (and the socket file removed) as soon as the
worker is in.

Stopping is graceful first (`Shutdown`: the worker finishes what is in flight), then SIGTERM,
then SIGKILL, to the child's whole process group. A supervisor task per instance notices a
child that dies or a channel that fails (heartbeats, malformed frames), fails every pending
request at once, and restarts the child when the restart policy says so, swapping the new
connection into the same `ProcessInstance`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
import signal
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spear.channel.factory import CommunicationFactory
from spear.channel.rendezvous import Invitation
from spear.channel.strategy import CommunicationStrategy
from spear.channel.stream import StreamChannel
from spear.config import ChannelConfig
from spear.errors import (
    ChannelClosed,
    CommunicationError,
    InvalidConfiguration,
    Timeout,
    UnsupportedChannel,
)
from spear.instance_id import RuntimeInstanceId, RuntimeType
from spear.log_limit import LogLimiter
from spear.protocol.environment import Endpoint, WorkerEnvironment
from spear.protocol.messages import Shutdown
from spear.runtime.base import Runtime, RuntimeInstance
from spear.transport.unix import make_private_dir

log = logging.getLogger(__name__)

# The process runtime's strategy: Unix socket first, TCP on loopback when that fails.
DEFAULT_CHANNEL_ORDER: tuple[str, ...] = ("unix", "tcp")
SUPPORTED_CHANNEL_TYPES: tuple[str, ...] = ("unix", "tcp")

DEFAULT_AUTH_TIMEOUT = 5.0
DEFAULT_SHUTDOWN_GRACE = 5.0
DEFAULT_TERM_GRACE = 2.0
STDERR_TAIL_LINES = 20


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When a child that dies on its own is started again.

    `never`: it stays dead. `on-failure`: a non-zero exit, a signal, or a dead channel
    restarts it, after `initial_backoff * multiplier**n` seconds (capped at `max_backoff`),
    at most `max_restarts` times over the instance's life. A clean exit (0) is never restarted.
    """

    mode: str = "never"
    max_restarts: int = 3
    initial_backoff: float = 0.1
    max_backoff: float = 10.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.mode not in ("never", "on-failure"):
            raise InvalidConfiguration(
                f"restart policy mode must be 'never' or 'on-failure', got {self.mode!r}"
            )
        if self.max_restarts < 0 or self.initial_backoff < 0 or self.max_backoff < 0:
            raise InvalidConfiguration("restart counts and backoffs must be non-negative")
        if self.multiplier < 1:
            raise InvalidConfiguration(f"backoff multiplier must be >= 1, got {self.multiplier}")

    @classmethod
    def never(cls) -> RestartPolicy:
        return cls("never")

    @classmethod
    def on_failure(
        cls, max_restarts: int = 3, initial_backoff: float = 0.1, max_backoff: float = 10.0,
        multiplier: float = 2.0,
    ) -> RestartPolicy:
        return cls("on-failure", max_restarts, initial_backoff, max_backoff, multiplier)

    @property
    def restarts_on_failure(self) -> bool:
        return self.mode == "on-failure"

    def backoff(self, restarts_so_far: int) -> float:
        delay = self.initial_backoff * self.multiplier ** restarts_so_far
        return float(min(self.max_backoff, delay))


def worker_command(handler: str, *args: str, python: str = sys.executable) -> list[str]:
    """The command that serves the Python function `handler` (MODULE:FUNCTION)."""
    return [python, "-m", "spear.worker", handler, *args]


@dataclass(slots=True)
class _Spec:
    instance_id: RuntimeInstanceId
    command: list[str]
    env: dict[str, str]
    cwd: str | None
    config: ChannelConfig
    restart_policy: RestartPolicy


@dataclass(slots=True)
class _Connection:
    """One launch of the child: the process, its channel and the tasks that watch it."""

    process: asyncio.subprocess.Process
    channel: StreamChannel
    endpoint: str
    channel_type: str
    exited: asyncio.Task[int]
    pumps: list[asyncio.Task[None]]
    stderr_tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=STDERR_TAIL_LINES)
    )


class ProcessInstance(RuntimeInstance):
    """A child process and its channel. The object stays the same across restarts; only
    `.channel`, `.pid` and `.endpoint` change."""

    channel: StreamChannel

    def __init__(self, spec: _Spec, connection: _Connection) -> None:
        super().__init__(spec.instance_id, connection.channel)
        self._spec = spec
        self._connection = connection
        self._changed = asyncio.Event()  # set on restart and when the instance is gone
        self._stopping = False
        self._gone: CommunicationError | None = None
        self.restarts = 0
        self.returncode: int | None = None
        self._supervisor: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "stopped" if self._gone is not None else f"pid={self.pid}"
        return (f"<ProcessInstance {self.instance_id.full_id} {state} {self.endpoint} "
                f"restarts={self.restarts}>")

    @property
    def pid(self) -> int:
        return self._connection.process.pid

    @property
    def endpoint(self) -> str:
        """Where the host listened for this launch: `unix:/path` or `tcp:127.0.0.1:PORT`."""
        return self._connection.endpoint

    @property
    def channel_type(self) -> str:
        return self._connection.channel_type

    @property
    def restart_policy(self) -> RestartPolicy:
        return self._spec.restart_policy

    @property
    def stderr_tail(self) -> list[str]:
        """The last lines the current child wrote to stderr (they are also logged)."""
        return list(self._connection.stderr_tail)

    @property
    def recovers(self) -> bool:
        return self._spec.restart_policy.restarts_on_failure

    async def wait_ready(self, timeout: float | None = None) -> StreamChannel:
        """The live channel, waiting through a restart if one is under way.

        Raises `ChannelClosed` when the instance is stopped or will not come back, and
        `Timeout` when `timeout` passes first.
        """
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self._gone is not None:
                        raise ChannelClosed(f"{self.instance_id.full_id} is gone: {self._gone}")
                    if self.channel.connected:
                        return self.channel
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise Timeout(f"{self.instance_id.full_id} was not ready within {timeout} s") from None

    def _attach(self, connection: _Connection) -> None:
        self._connection = connection
        self.channel = connection.channel
        self._changed.set()

    def _mark_gone(self, reason: CommunicationError) -> None:
        self._gone = reason
        self._changed.set()


class ProcessRuntime(Runtime):
    """Runs functions as child processes, each reached through its own private socket."""

    runtime_type = RuntimeType.PROCESS

    def __init__(
        self,
        *,
        channel_order: Sequence[str] = DEFAULT_CHANNEL_ORDER,
        config: ChannelConfig | None = None,
        restart_policy: RestartPolicy | None = None,
        base_dir: str | None = None,
        auth_timeout: float = DEFAULT_AUTH_TIMEOUT,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
        term_grace: float = DEFAULT_TERM_GRACE,
    ) -> None:
        """
        `channel_order` is the fallback strategy (the invocation layer's factory passes its
        own); `config.channel_type`, when set, overrides it for that instance. `base_dir` is
        where the runtime's private socket directory is made ($XDG_RUNTIME_DIR or /tmp by
        default). `auth_timeout` bounds how long a new connection may take to authenticate;
        `shutdown_grace` and `term_grace` how long a child gets after `Shutdown` and after
        SIGTERM before the next, harder step.
        """
        self._channel_order = _check_types(channel_order)
        self._config = config or ChannelConfig()
        order = self._channel_order
        self._factory = CommunicationFactory({RuntimeType.PROCESS: CommunicationStrategy(
            RuntimeType.PROCESS, order[0], order[1:], self._config)})
        self._restart_policy = restart_policy or RestartPolicy()
        self._base_dir = base_dir
        self._auth_timeout = auth_timeout
        self._shutdown_grace = shutdown_grace
        self._term_grace = term_grace
        self._runtime_dir: str | None = None
        self._instances: dict[RuntimeInstanceId, ProcessInstance] = {}
        self._starting: set[RuntimeInstanceId] = set()

    @property
    def channel_order(self) -> tuple[str, ...]:
        return self._channel_order

    @property
    def runtime_dir(self) -> str | None:
        """The private directory holding this runtime's sockets (made on first use)."""
        return self._runtime_dir

    def instances(self) -> list[RuntimeInstance]:
        return list(self._instances.values())

    async def start_instance(  # type: ignore[override]
        self,
        instance_id: RuntimeInstanceId | str,
        *,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        config: ChannelConfig | None = None,
        restart_policy: RestartPolicy | None = None,
        **options: Any,
    ) -> ProcessInstance:
        """Start `command` as a worker and return once it is connected and authenticated.

        Raises `ChannelCreationFailed` listing every channel type tried and why it failed.
        """
        if options:
            raise InvalidConfiguration(f"unknown start_instance options: {sorted(options)}")
        ident = self._coerce_id(instance_id)
        if not command:
            raise InvalidConfiguration("command must name a program to run")
        if ident in self._instances or ident in self._starting:
            raise InvalidConfiguration(f"instance {ident.full_id} is already running")
        spec = _Spec(ident, [str(part) for part in command], dict(env or {}),
                     os.fspath(cwd) if cwd is not None else None, config or self._config,
                     restart_policy or self._restart_policy)
        self._starting.add(ident)
        try:
            connection = await self._launch(spec)
        finally:
            self._starting.discard(ident)
        instance = ProcessInstance(spec, connection)
        self._instances[ident] = instance
        instance._supervisor = asyncio.get_running_loop().create_task(
            self._supervise(instance), name=f"spear-supervise:{ident.full_id}"
        )
        log.info("started %s (pid %d) over %s", ident.full_id, connection.process.pid,
                 connection.endpoint)
        return instance

    async def stop_instance(self, instance: RuntimeInstance) -> None:
        """Shutdown, then SIGTERM, then SIGKILL; pending requests that remain fail."""
        if not isinstance(instance, ProcessInstance):
            raise TypeError(f"not a process instance: {instance!r}")
        if self._instances.get(instance.instance_id) is not instance:
            return
        instance._stopping = True
        supervisor = instance._supervisor
        if supervisor is not None and not supervisor.done():
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await supervisor
        try:
            await self._terminate(instance._connection, graceful=True)
        finally:
            await self._factory.close_channel(instance.instance_id)
            instance.returncode = instance._connection.process.returncode
            instance._mark_gone(ChannelClosed(f"{instance.instance_id.full_id} was stopped"))
            self._instances.pop(instance.instance_id, None)
        log.info("stopped %s (exit %s)", instance.instance_id.full_id,
                 _describe_exit(instance.returncode))

    async def close(self) -> None:
        """Stop every instance, then remove the private socket directory."""
        instances = list(self._instances.values())
        results = await asyncio.gather(*(self.stop_instance(i) for i in instances),
                                       return_exceptions=True)
        for instance, result in zip(instances, results, strict=True):
            if isinstance(result, BaseException):
                log.error("stopping %s failed: %s", instance.instance_id.full_id, result)
        await self._factory.close_all_channels()
        if self._runtime_dir is not None:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)
            self._runtime_dir = None

    # -- launching ----------------------------------------------------------------------

    async def _launch(self, spec: _Spec) -> _Connection:
        """Start the child through the factory: each channel type in the strategy listens on
        its own private endpoint and invites a fresh child to dial in."""
        ident = spec.instance_id
        started: list[_Child] = []

        async def start_peer(endpoint: Endpoint, token: str) -> _Child:
            child = await _Child.spawn(spec, endpoint, token)
            started.append(child)
            return child

        label = f"{ident.namespace}.{ident.instance_id}" if ident.namespace else ident.instance_id
        invitation = Invitation(start_peer, self._ensure_runtime_dir, label, self._auth_timeout)
        channel = await self._factory.create_channel_for_instance(
            ident, spec.config, accept=invitation)
        assert isinstance(channel, StreamChannel) and started
        child = started[-1]
        return _Connection(child.process, channel, channel.peer,
                           channel.capabilities.transport, child.exited, child.pumps, child.tail)

    def _ensure_runtime_dir(self) -> str:
        if self._runtime_dir is None:
            self._runtime_dir = make_private_dir(self._base_dir)
        return self._runtime_dir

    # -- supervision --------------------------------------------------------------------

    async def _supervise(self, instance: ProcessInstance) -> None:
        ident = instance.instance_id
        policy = instance.restart_policy
        while True:
            connection = instance._connection
            failure = await self._watch(instance, connection)
            if instance._stopping:
                return
            instance.returncode = connection.process.returncode
            if failure is None or not policy.restarts_on_failure:
                instance._mark_gone(ChannelClosed(
                    f"{ident.full_id} exited with {_describe_exit(instance.returncode)}"
                    + (f" ({failure})" if failure else "")
                ))
                log.warning("%s is gone: %s", ident.full_id, instance._gone)
                self._instances.pop(ident, None)
                await self._factory.close_channel(ident)
                return
            while True:
                if instance.restarts >= policy.max_restarts:
                    instance._mark_gone(ChannelClosed(
                        f"{ident.full_id} failed ({failure}) and used up its "
                        f"{policy.max_restarts} restarts"
                    ))
                    log.error("%s", instance._gone)
                    self._instances.pop(ident, None)
                    await self._factory.close_channel(ident)
                    return
                delay = policy.backoff(instance.restarts)
                log.warning("%s failed (%s); restarting in %.3g s", ident.full_id, failure, delay)
                await asyncio.sleep(delay)
                instance.restarts += 1
                try:
                    new_connection = await self._launch(instance._spec)
                except CommunicationError as exc:
                    failure = f"restart failed: {exc}"
                    continue
                instance._attach(new_connection)
                log.info("restarted %s (pid %d, restart %d) over %s", ident.full_id,
                         new_connection.process.pid, instance.restarts, new_connection.endpoint)
                break

    async def _watch(self, instance: ProcessInstance, connection: _Connection) -> str | None:
        """Wait until the child exits or its channel fails; returns the failure, or None for
        a clean exit. Either way the channel is closed and the child is gone afterwards."""
        channel = connection.channel
        closed = asyncio.ensure_future(channel.wait_closed())
        try:
            await asyncio.wait({connection.exited, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if instance._stopping:
            return None
        if not connection.exited.done() and channel.closed_by_peer:
            # A worker hangs up just before it exits (after a drain, say): let it finish.
            await _wait_exit(connection, self._term_grace)
        if connection.exited.done():
            code = connection.exited.result()
            channel.fail(f"worker process {connection.process.pid} exited with "
                         f"{_describe_exit(code)}")
            return None if code == 0 else f"exit {_describe_exit(code)}"
        reason = channel.close_reason
        log.warning("channel to %s failed (%s); killing pid %d", instance.instance_id.full_id,
                    reason, connection.process.pid)
        await _kill_group(connection.process)
        await _wait_exit(connection, 5.0)
        return f"channel failed: {reason}"

    async def _terminate(self, connection: _Connection, *, graceful: bool) -> None:
        process = connection.process
        channel = connection.channel
        if process.returncode is None and graceful and channel.connected:
            with contextlib.suppress(CommunicationError):
                await channel.send(Shutdown(True, int(self._shutdown_grace * 1000)))
            await _wait_exit(connection, self._shutdown_grace)
        if process.returncode is None:
            _signal_group(process, signal.SIGTERM)
            await _wait_exit(connection, self._term_grace)
        if process.returncode is None:
            _signal_group(process, signal.SIGKILL)
            await _wait_exit(connection, 5.0)
        await channel.close()
        if connection.pumps:
            await asyncio.wait(connection.pumps, timeout=1.0)
            for pump in connection.pumps:
                pump.cancel()


class _Child:
    """One started child: what the rendezvous watches (`gone`) and can send away
    (`abandon`) while it waits for the child to dial in."""

    def __init__(self, process: asyncio.subprocess.Process, ident: RuntimeInstanceId) -> None:
        self.process = process
        self.tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.pumps = _start_pumps(process, ident, self.tail)
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Task[int] = loop.create_task(
            process.wait(), name=f"spear-wait:{process.pid}")
        self._gone: asyncio.Task[str] = loop.create_task(self._why_gone())

    @classmethod
    async def spawn(cls, spec: _Spec, endpoint: Endpoint, token: str) -> _Child:
        env = dict(os.environ)
        env.update(spec.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(WorkerEnvironment(endpoint, spec.instance_id.full_id, token,
                                     spec.config.max_message_size).to_environ())
        process = await asyncio.create_subprocess_exec(
            *spec.command, env=env, cwd=spec.cwd, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        return cls(process, spec.instance_id)

    @property
    def gone(self) -> asyncio.Future[str]:
        return self._gone

    async def _why_gone(self) -> str:
        code = await asyncio.shield(self.exited)
        # Let the pumps catch the last stderr lines for the error message.
        await asyncio.wait(self.pumps, timeout=0.5)
        return f"worker exited with {_describe_exit(code)}{_format_tail(self.tail)}"

    async def abandon(self) -> None:
        await _kill_group(self.process)
        # Reap it even when we are being cancelled (the original error wins).
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(self.exited), 5.0)
        self._gone.cancel()
        for pump in self.pumps:
            pump.cancel()


def _check_types(order: Iterable[str]) -> tuple[str, ...]:
    types = tuple(order)
    if not types:
        raise InvalidConfiguration("the process runtime needs at least one channel type")
    for kind in types:
        if kind not in SUPPORTED_CHANNEL_TYPES:
            raise UnsupportedChannel(
                f"the process runtime speaks {', '.join(SUPPORTED_CHANNEL_TYPES)}, not {kind!r}"
            )
    return types


async def _wait_exit(connection: _Connection, timeout: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(connection.exited), timeout)
    return connection.process.returncode is not None


def _signal_group(process: asyncio.subprocess.Process, signum: int) -> None:
    """Signal the child's process group (it leads its own session), or just the child."""
    if process.returncode is not None:
        return
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)


async def _kill_group(process: asyncio.subprocess.Process) -> None:
    _signal_group(process, signal.SIGKILL)
    await asyncio.sleep(0)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit code yet"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def _format_tail(tail: Iterable[str]) -> str:
    lines = list(tail)
    if not lines:
        return ""
    return "; its stderr ended with:\n    " + "\n    ".join(lines[-5:])


# A child's output lines, logged: cut at this length, and at most a burst then a rate, in
# lines and in bytes (the rest counted and summarised); the stderr tail kept for error
# messages is not limited.
MAX_OUTPUT_LINE = 16 * 1024
OUTPUT_LINES_BURST = 1000
OUTPUT_LINES_PER_S = 200.0
OUTPUT_BURST_BYTES = 1024 * 1024
OUTPUT_BYTES_PER_S = 256 * 1024.0


_output_log = logging.getLogger("spear.process")


def _start_pumps(
    process: asyncio.subprocess.Process, ident: RuntimeInstanceId, tail: collections.deque[str]
) -> list[asyncio.Task[None]]:
    # One logger for every instance (the instance is in each record and its message): a
    # logger per instance would never be freed, and instances come and go for good.
    logger = _output_log
    loop = asyncio.get_running_loop()
    pumps = []
    if process.stdout is not None:
        pumps.append(loop.create_task(
            _pump(process.stdout, logger, logging.INFO, ident, "stdout", None)))
    if process.stderr is not None:
        pumps.append(loop.create_task(
            _pump(process.stderr, logger, logging.WARNING, ident, "stderr", tail)))
    return pumps


async def _pump(
    stream: asyncio.StreamReader,
    logger: logging.Logger,
    level: int,
    ident: RuntimeInstanceId,
    name: str,
    tail: collections.deque[str] | None,
) -> None:
    """Log the child's `name` stream line by line, tagged with the instance, within the
    bounds of a `LogLimiter` (a chatty child cannot flood the host's log)."""
    extra = {"spear_instance": ident.full_id, "spear_stream": name}
    pid_hint = ident.full_id
    limiter = LogLimiter(logger, f"lines of {pid_hint} {name}", rate=OUTPUT_LINES_PER_S,
                         burst=OUTPUT_LINES_BURST, bytes_per_s=OUTPUT_BYTES_PER_S,
                         burst_bytes=OUTPUT_BURST_BYTES, summary_interval=1.0, level=level)
    try:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:
                if limiter.allow("too long"):
                    logger.log(level, "[%s %s] (line longer than %d bytes dropped)",
                               pid_hint, name, 2**16, extra=extra)
                continue
            except (ConnectionError, asyncio.IncompleteReadError):
                return
            if not raw:
                return
            line = raw[:MAX_OUTPUT_LINE].decode(errors="replace").rstrip("\r\n")
            if tail is not None:
                tail.append(line)
            if limiter.allow(name, len(line)):
                logger.log(level, "[%s %s] %s", pid_hint, name, line, extra=extra)
    finally:
        limiter.flush()  # what was held back is said when the stream ends
