"""The supervisor: the process `clearipctl run` starts, parent of the relay workers.

It binds no SIP socket. It starts N relay workers (each binds its own listeners with
SO_REUSEPORT, so the kernel spreads the load), restarts one that dies, serves the control socket
(status, reload), turns SIGHUP into a reload and SIGTERM/SIGINT into a graceful stop. It runs on
the plain asyncio loop, not uvloop: the fast-path code that will live here (pyroute2) wants it.

Workers are told apart by index. Each has a socketpair to the supervisor (see `workerlink`);
the worker exits when the supervisor's end closes, so no worker outlives the supervisor.

Longer than 700 lines: the workers' lifecycle, the control operations and the fast path's
watchdog share one loop and its state; what it reports is assembled in statusreport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clearip import __version__, build, trust
from clearip.config import Config, ConfigError, default_config, load_config
from clearip.ctlsock import ControlError, ControlServer, Handler, OpError
from clearip.fastpath.steering import Steering, SteeringError
from clearip.logsetup import set_level
from clearip.notices import Throttle, log_notice
from clearip.relay.conncount import make_shared
from clearip.relay.counters import SOURCE_COUNTER_NAMES
from clearip.relay.tap import TRANSPORTS, check_transports
from clearip.statusreport import (
    KERNEL_COUNTER_NAMES,
    OWN_KEYS,
    aggregate_stats,
    fastpath_placeholder,
    int_count,
    trust_check,
)
from clearip.workerlink import WorkerChannel, WorkerError

__all__ = ["WORKER_MODULE", "WORKER_MODULE_ENV", "Supervisor"]

log = logging.getLogger(__name__)

WORKER_MODULE = "clearip.relay.worker"
WORKER_MODULE_ENV = "CLEARIP_WORKER_MODULE"  # tests run a fake worker through this

READY_TIMEOUT = 30.0  # from spawn to {"event": "ready"}
STATS_TIMEOUT = 2.0  # per worker, well inside the control client's 5 s
RELOAD_TIMEOUT = 10.0
SHUTDOWN_MARGIN = 2.0  # grace = clearip.timeout + this: a call at the ClearIP stage can finish
KILL_WAIT = 5.0  # after SIGKILL, for the kernel to reap
LINK_LOST_WAIT = 1.0  # a worker whose link closed gets this long to exit on its own
RESTART_BACKOFF = 0.5  # first restart delay; doubled per quick failure ...
RESTART_BACKOFF_MAX = 30.0  # ... up to this
STABLE_AFTER = 30.0  # a worker that ran this long resets the backoff

def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) about READY=1 / STOPPING=1; nothing outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError as e:
            log.warning("cannot notify systemd (%s): %s", state, e)


async def _wait_exit(proc: subprocess.Popen[bytes]) -> int:
    """Wait for `proc` to exit without blocking the loop and without a SIGCHLD handler."""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:  # a kernel older than 5.3: poll, cheaply enough for a handful of workers
        while proc.poll() is None:
            await asyncio.sleep(0.1)
        return proc.returncode
    try:
        exited = loop.create_future()
        loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
        try:
            await exited
        finally:
            loop.remove_reader(pidfd)
    finally:
        os.close(pidfd)
    return proc.wait()  # it has exited: this only reaps it


# ---------------------------------------------------------------------------------------------
# The supervisor


@dataclass(eq=False)
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    channel: WorkerChannel
    started_at: float
    ready: asyncio.Future[bool]  # True on {"event": "ready"}, False if it exited before
    exited: asyncio.Future[int]  # the exit status (negative: killed by that signal)
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)
    calls: int = 0  # calls being set up, as it last reported (lost if it dies)

    @property
    def is_ready(self) -> bool:
        return self.ready.done() and self.ready.result() and not self.exited.done()

    @property
    def name(self) -> str:
        return f"worker {self.index} (pid {self.proc.pid})"


class Supervisor:
    """Runs the relay workers and the control socket until SIGTERM/SIGINT."""

    def __init__(
        self,
        config_path: str | None,
        config: Config,
        worker_module: str | None = None,
        *,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.config_path = config_path  # None: built-in defaults, nothing to re-read
        self.config = config
        self.worker_module = worker_module or os.environ.get(WORKER_MODULE_ENV) or WORKER_MODULE
        self.ready_timeout = ready_timeout
        self.workers_restarted = 0
        self.calls_lost = 0  # calls being set up in workers that died
        self._workers: list[_Worker] = []
        # Fixed for the life of the process: a changed relay.workers needs a restart.
        self._count = config.relay.effective_workers()
        # names this proxy in its workers' Via branches (loop detection), for its whole life
        self.instance = secrets.token_hex(4)
        # the workers' hand-off sockets: a directory only this proxy's user may enter
        self.handoff_dir = Path(config.control.socket).parent / f"handoff-{os.getpid()}"
        # TCP/TLS connection counts every worker reads, so the limits hold across them
        self._conncount_fd = make_shared(self._count)
        # the kernel's call steering on the shared UDP ports, for the life of the process
        self._steering: Steering | None = None
        self.steering_status: dict[str, Any] = {"mode": "off", "reason": "not loaded yet"}
        self._started = time.monotonic()
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self._reload_lock = asyncio.Lock()
        self._slots: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ops: dict[str, Handler] = {
            "ping": self._op_ping,
            "status": self._op_status,
            "reload": self._op_reload,
            "allow": self._op_allow,
            "deny": self._op_deny,
            "trusted": self._op_trusted,
            "tap": self._op_tap,
            "untap": self._op_untap,
        }
        # live `capture --decrypted` sockets -> transports; handed to restarted workers too
        self._taps: dict[str, list[str]] = {}
        self._notices = Throttle()  # the workers' warnings, once a minute for the proxy
        self._trust_lock = asyncio.Lock()
        # The kernel fast path (nftables + eBPF), when it is loaded: set by the fast-path
        # manager; None means the relay's own check is the only enforcer.
        self.fastpath: Any = None
        self._ctl = ControlServer(config.control.socket, self._ops)
        self._metrics: Any = None  # the Prometheus /metrics server (clearip.metrics), when up

    # --- lifecycle ---

    async def run(self) -> int:
        """Run until stopped; 0 after a clean stop, 1 when the proxy could not start."""
        loop = asyncio.get_running_loop()
        self._started = time.monotonic()
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        try:
            return await self._run()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    async def _run(self) -> int:
        # The control socket first: a second proxy must fail here, before its workers bind
        # SO_REUSEPORT listeners and take a share of the first one's traffic.
        try:
            await self._ctl.start()
        except ControlError as e:
            log.error("%s", e)
            return 1
        try:
            # before the workers: READY=1 means the SIP ports are guarded (SPEC §5, §6)
            if not self._start_fastpath():
                return 1
            if not await self._start_workers():
                return 1
            if not self._stop_requested.is_set():
                log.info(
                    "proxy %s running, %s: %d relay workers, control socket %s",
                    __version__,
                    build.describe(),
                    len(self._workers),
                    self.config.control.socket,
                )
                self._start_metrics()
                if self.fastpath is not None and self.fastpath.enabled:
                    self._background(self._watch_fastpath())
                _sd_notify("READY=1")  # listeners up and the fast path applied (or off)
                self._slots = [
                    asyncio.create_task(self._keep_running(i), name=f"slot-{i}")
                    for i in range(len(self._workers))
                ]
                await self._stop_requested.wait()
            return 0
        finally:
            await self._stop()

    def _start_metrics(self) -> None:
        """Serve Prometheus metrics on `control.metrics`; a failure is logged, not fatal: metrics
        are not worth refusing calls over."""
        address = self.config.control.metrics
        if address is None:
            return
        from clearip.metrics import start_metrics_server

        loop = asyncio.get_running_loop()

        def status_provider() -> dict[str, Any]:
            # Called from the metrics server's thread, never from the loop (it would deadlock).
            future = asyncio.run_coroutine_threadsafe(self.status(), loop)
            try:
                return future.result(timeout=5)
            except BaseException:
                future.cancel()
                raise

        try:
            self._metrics = start_metrics_server(address.host, address.port, status_provider)
        except OSError as e:
            log.error("cannot serve metrics on %s (running without them): %s", address, e)
            return
        log.info("metrics on http://%s/metrics", address)

    async def _start_workers(self) -> bool:
        loop = asyncio.get_running_loop()
        try:
            shutil.rmtree(self.handoff_dir, ignore_errors=True)
            self.handoff_dir.mkdir(mode=0o700, parents=True)
            os.chmod(self.handoff_dir, 0o700)  # whatever the umask
        except OSError as e:
            log.error("cannot make the workers' hand-off directory %s: %s", self.handoff_dir, e)
            return False
        if not self._load_steering():
            return False
        for index in range(self._count):
            try:
                self._workers.append(await self._spawn(index))
            except OSError as e:
                log.error("cannot start relay worker %d (%s): %s", index, self.worker_module, e)
                return False
        pending = {w.ready: w for w in self._workers}
        stop = asyncio.create_task(self._stop_requested.wait())
        deadline = loop.time() + self.ready_timeout
        try:
            while pending:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                done, _ = await asyncio.wait(
                    [*pending, stop], timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                if stop in done:
                    return True  # stopped while starting: a clean stop, not a failure
                for future in done:
                    worker = pending.pop(future)
                    if not future.result():
                        log.error(
                            "cannot start: relay %s %s before it was ready (see its log above)",
                            worker.name,
                            _describe_exit(worker.exited.result()),
                        )
                        return False
        finally:
            stop.cancel()
        if pending:
            late = ", ".join(w.name for w in pending.values())
            log.error("cannot start: relay %s not ready after %g s", late, self.ready_timeout)
            return False
        return True

    def _load_steering(self) -> bool:
        """relay.steering: load the program that gives each worker its calls' datagrams
        (fastpath/steering.py). False only when it is required and cannot load."""
        mode = self.config.relay.steering
        listeners = len(self.config.listen.udp)
        off = (
            "one worker" if self._count < 2
            else "relay.steering = off" if mode == "off"
            else "nothing to steer" if not listeners
            else None
        )  # fmt: skip
        if off is not None:
            self.steering_status = {"mode": "off", "reason": off}
            return True
        try:
            self._steering = Steering.load(listeners, self._count)
        except SteeringError as e:
            if mode == "on":
                log.error(
                    "cannot start: relay.steering = on, but the kernel refused the call-steering "
                    "program (%s); run as root on Linux 5.3+, or set relay.steering = auto",
                    e,
                )
                return False
            log.warning(
                "calls not steered in the kernel (%s): workers hand each other their calls "
                "(set relay.steering = off to say so)",
                e,
            )
            self.steering_status = {"mode": "handoff", "reason": str(e)}
            return True
        log.info("calls steered to their workers by an SK_REUSEPORT program (Call-ID hash)")
        self.steering_status = {"mode": "ebpf", "reason": ""}
        return True

    async def _spawn(self, index: int) -> _Worker:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [
            sys.executable, "-m", self.worker_module,
            "--config", self.config_path or "",
            "--index", str(index),
            "--workers", str(self._count),
            "--ctl-fd", str(child.fileno()),
            "--instance", self.instance,
            "--handoff-dir", str(self.handoff_dir),
            "--conncount-fd", str(self._conncount_fd),
            "--steering-fds", self._steering.arg() if self._steering else "",
        ]  # fmt: skip
        try:
            # process_group=0: a terminal's Ctrl-C reaches the supervisor only, which then
            # stops the workers gracefully instead of having them all die at once.
            proc = subprocess.Popen(
                argv,
                pass_fds=[
                    child.fileno(),
                    self._conncount_fd,
                    *(self._steering.fds() if self._steering else ()),
                ],
                stdin=subprocess.DEVNULL,
                process_group=0,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            # Only the worker may hold its end: its exit must read as EOF on ours.
            child.close()
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[bool] = loop.create_future()
        worker_ref: list[_Worker] = []
        channel = await WorkerChannel.open(
            parent, lambda event: self._on_event(worker_ref[0], event), f"worker {index}"
        )
        worker = _Worker(index, proc, channel, time.monotonic(), ready, loop.create_future())
        worker_ref.append(worker)
        worker.watcher = asyncio.create_task(self._watch(worker), name=f"watch-{proc.pid}")
        log.debug("started relay %s", worker.name)
        return worker

    def _on_event(self, worker: _Worker, event: dict[str, Any]) -> None:
        if event.get("event") == "ready":
            if not worker.ready.done():
                worker.ready.set_result(True)
                log.info("relay %s ready", worker.name)
        elif event.get("event") == "pinhole" and isinstance(event.get("ip"), str):
            if self.fastpath is not None:  # a worker's first or last call to a next hop
                self.fastpath.pinhole(worker.index, event["ip"], bool(event.get("open")))
        elif event.get("event") == "load":
            worker.calls = int_count(event.get("calls"))
        elif event.get("event") == "notice" and isinstance(event.get("kind"), str):
            kind = event["kind"]
            if self._notices.allow(kind, time.monotonic()):
                detail = {k: v for k, v in event.items() if k not in ("event", "kind")}
                log_notice(logging.getLogger("clearip.relay"), kind, detail)
        else:
            log.debug("relay %s: event %r ignored", worker.name, event.get("event"))

    async def _watch(self, worker: _Worker) -> None:
        exit_task = asyncio.create_task(_wait_exit(worker.proc))
        link_task = asyncio.create_task(worker.channel.wait_closed())
        try:
            await asyncio.wait([exit_task, link_task], return_when=asyncio.FIRST_COMPLETED)
            if not exit_task.done() and not self._stopping:
                # A worker without its link can be neither supervised nor stopped: replace it.
                try:
                    await asyncio.wait_for(asyncio.shield(exit_task), LINK_LOST_WAIT)
                except TimeoutError:
                    log.error("relay %s closed its control link; killing it", worker.name)
                    worker.proc.kill()
            returncode = await exit_task
        finally:
            link_task.cancel()
            if not exit_task.done():
                exit_task.cancel()
        worker.exited.set_result(returncode)
        if not self._stopping and worker.calls:
            # their callers get no answer from us (their switch's INVITE timer route-advances;
            # an INVITE retransmitted in time starts afresh on the restarted worker)
            self.calls_lost += worker.calls
            log.error("relay %s took %d calls being set up with it", worker.name, worker.calls)
        if not worker.ready.done():
            worker.ready.set_result(False)
        if self.fastpath is not None:
            self.fastpath.release(worker.index)  # its calls are gone with it
        await worker.channel.close()

    async def _keep_running(self, index: int) -> None:
        """Restart worker `index` whenever it dies, with backoff, until the proxy stops."""
        failures = 0
        while True:
            worker = self._workers[index]
            # shield: cancelling this task at stop must not cancel the shared future.
            returncode = await asyncio.shield(worker.exited)
            if self._stopping:
                return
            ran = time.monotonic() - worker.started_at
            if worker.ready.result() and ran >= STABLE_AFTER:
                failures = 0
            while True:
                failures += 1
                delay = min(RESTART_BACKOFF_MAX, RESTART_BACKOFF * 2 ** (failures - 1))
                log.error(
                    "relay %s %s after %.1f s; restarting it in %g s",
                    worker.name,
                    _describe_exit(returncode),
                    ran,
                    delay,
                )
                await asyncio.sleep(delay)
                try:
                    worker = await self._spawn(index)
                except OSError as e:
                    log.error("cannot start relay worker %d: %s", index, e)
                    continue
                break
            self._workers[index] = worker
            self.workers_restarted += 1
            try:
                ready = await asyncio.wait_for(asyncio.shield(worker.ready), self.ready_timeout)
            except TimeoutError:
                log.error(
                    "relay %s not ready after %g s; killing it", worker.name, self.ready_timeout
                )
                worker.proc.kill()
                continue
            if ready:
                await self._resync(worker)

    async def _resync(self, worker: _Worker) -> None:
        # A restarted worker read the config file anew; hand it the one the others run, which
        # may differ if the file was edited since the last reload.
        async with self._reload_lock:
            try:
                await worker.channel.call(
                    "reload", config=self.config.to_dict(), timeout=RELOAD_TIMEOUT
                )
            except WorkerError as e:
                log.error("relay %s: could not apply the running config: %s", worker.name, e)
        for path, transports in list(self._taps.items()):
            if not os.path.exists(path):  # that capture has ended without saying so
                del self._taps[path]
                continue
            try:
                await worker.channel.call("tap", path=path, transports=transports, timeout=5.0)
            except WorkerError as e:
                log.error("relay %s: could not restore capture tap %s: %s", worker.name, path, e)

    async def _stop(self) -> None:
        self._stopping = True
        _sd_notify("STOPPING=1")
        if self._metrics is not None:
            metrics, self._metrics = self._metrics, None
            await asyncio.to_thread(metrics.stop)  # its shutdown waits up to 0.5 s
        for task in (*self._slots, *self._tasks):
            task.cancel()
        await asyncio.gather(*self._slots, *self._tasks, return_exceptions=True)
        alive = [w for w in self._workers if not w.exited.done()]
        if alive:
            grace = self.config.clearip.timeout + SHUTDOWN_MARGIN
            log.info("stopping %d relay workers (grace %g s)", len(alive), grace)
            requests = [
                # A worker that never got ready has no call to finish.
                asyncio.create_task(self._request_shutdown(w, grace if w.is_ready else 0.0))
                for w in alive
            ]
            await asyncio.wait([w.exited for w in alive], timeout=grace + SHUTDOWN_MARGIN)
            stragglers = [w for w in alive if not w.exited.done()]
            for worker in stragglers:
                log.warning("relay %s did not stop within %g s; killing it", worker.name, grace)
                worker.proc.kill()
            if stragglers:
                await asyncio.wait([w.exited for w in stragglers], timeout=KILL_WAIT)
            for task in requests:
                task.cancel()
            await asyncio.gather(*requests, return_exceptions=True)
        for worker in self._workers:
            if worker.watcher is not None and not worker.watcher.done():
                worker.watcher.cancel()  # only if SIGKILL could not be reaped: nothing left to do
                with contextlib.suppress(asyncio.CancelledError):
                    await worker.watcher
            await worker.channel.close()
        if self.fastpath is not None:
            self.fastpath.stop()  # after the workers: no SIP port is left unguarded meanwhile
            self.fastpath = None
        shutil.rmtree(self.handoff_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.close(self._conncount_fd)
        if self._steering is not None:
            self._steering.close()
            self._steering = None
        await self._ctl.close()
        log.info("proxy stopped")

    async def _request_shutdown(self, worker: _Worker, grace: float) -> None:
        try:
            await worker.channel.call("shutdown", grace=grace, timeout=grace + SHUTDOWN_MARGIN)
        except WorkerError as e:
            log.debug("relay %s: shutdown: %s", worker.name, e)

    # --- signals ---

    def _on_stop_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if not self._stop_requested.is_set():
            log.info("%s: stopping gracefully", name)
            self._stop_requested.set()
            return
        # A second signal: the operator does not want to wait for calls to finish.
        log.warning("%s again: killing the relay workers now", name)
        for worker in self._workers:
            if not worker.exited.done():
                worker.proc.kill()

    def _on_hup(self) -> None:
        log.info("SIGHUP: reloading the config")
        self._background(self._reload_quietly())

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        # Kept, so it is neither garbage-collected mid-flight nor left running at stop.
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_quietly(self) -> None:
        with contextlib.suppress(OpError):  # already logged; a signal has nobody to answer
            await self.reload()

    # --- operations ---

    async def reload(self) -> dict[str, Any]:
        """Re-read the config file and hand it to every worker. A bad file changes nothing."""
        async with self._reload_lock:
            if self._stopping:
                raise OpError("the proxy is stopping")
            try:
                new = load_config(self.config_path) if self.config_path else default_config()
            except ConfigError as e:
                log.error("reload refused, keeping the running config: config error: %s", e)
                raise OpError(f"config error: {e}") from None
            old = self.config
            for key, before, after in (
                ("control.socket", old.control.socket, new.control.socket),
                ("control.state_dir", old.control.state_dir, new.control.state_dir),
                ("relay.workers", old.relay.workers, new.relay.workers),
            ):
                if before != after:
                    log.warning("reload: %s changed; it takes effect at the next restart", key)
            async with self._trust_lock:
                count = await self._apply_config(old, new)
            set_level(new.control.log_level)
            log.info(
                "config reloaded from %s into %d relay workers",
                self.config_path or "built-in defaults",
                count,
            )
            return {"config": self.config_path, "workers": count}

    async def _apply_config(self, old: Config, new: Config) -> int:
        """The new config to every enforcer in one step, undone if any of them fails: the
        kernel's trusted list first (trust.sources may have changed), then the workers."""
        try:
            before = [str(e.cidr) for e in self.trusted_entries()]
            after = [str(e.cidr) for e in trust.entries(new.trust.sources, new.control.state_dir)]
        except (OSError, ValueError, KeyError) as e:
            log.error("reload refused, keeping the running config: trusted list: %s", e)
            raise OpError(f"trusted list: {e}") from None
        kernel = self.fastpath is not None and before != after
        try:
            if kernel:
                self.fastpath.set_trusted(after)
            self.config = new
            return await self._broadcast("reload", timeout=RELOAD_TIMEOUT, config=new.to_dict())
        except Exception as e:
            log.error("reload failed, rolling back to the running config: %s", e)
            self.config = old
            with contextlib.suppress(Exception):
                await self._broadcast("reload", timeout=RELOAD_TIMEOUT, config=old.to_dict())
            if kernel:
                with contextlib.suppress(Exception):
                    self.fastpath.set_trusted(before)
            raise OpError(f"reload not applied (rolled back): {e}") from None

    async def status(self) -> dict[str, Any]:
        """The §6 status (see `status_contract`) plus `workers`, `workers_restarted` and the
        workers' other tables (`latency`, ...)."""
        workers = list(self._workers)
        ready = [w for w in workers if w.is_ready]
        replies = await asyncio.gather(
            *(w.channel.call("stats", timeout=STATS_TIMEOUT) for w in ready),
            return_exceptions=True,
        )
        answered: dict[int, dict[str, Any]] = {}
        for worker, reply in zip(ready, replies, strict=True):
            if isinstance(reply, dict):
                answered[worker.index] = reply
            else:
                log.warning("status: relay %s: %s", worker.name, reply)
        merged = aggregate_stats(answered.values(), self.config)
        return {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "listeners": merged["listeners"],
            "upstream": merged["upstream"],
            "fastpath": self._fastpath_status(),
            "counters": merged["counters"],
            "steering": self.steering_status,
            "build": {"build": build.BUILD, "detail": build.DETAIL},
            "sources": await self._with_kernel_counters(merged["sources"]),
            **{k: v for k, v in merged.items() if k not in OWN_KEYS},
            "workers": [
                {
                    "index": w.index,
                    "pid": w.proc.pid,
                    "alive": not w.exited.done(),
                    "ready": w.is_ready,
                    "answered": w.index in answered,
                }
                for w in workers
            ],
            "workers_restarted": self.workers_restarted,
            "calls_lost": self.calls_lost,
            "stopping": self._stopping,
        }

    # --- the kernel fast path ---

    def _fastpath_status(self) -> dict[str, Any]:
        if self.fastpath is None:
            return fastpath_placeholder(self.config)
        status: dict[str, Any] = self.fastpath.status()
        return status

    async def _with_kernel_counters(self, sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Put the eBPF per-source counters next to the relay's (and list the sources only the
        kernel saw: the untrusted ones it dropped before the relay could). The map is read on
        a thread: at 65k sources it takes long enough to stall calls on the loop."""
        if self.fastpath is None:
            return sources
        kernel = await asyncio.to_thread(self.fastpath.sources)
        if not kernel:
            return sources
        trusted = trust_check(self.config)
        by_address = {s["address"]: s for s in sources}
        for address, counts in kernel.items():
            entry = by_address.get(address)
            if entry is None:
                entry = by_address[address] = {
                    "address": address,
                    "trusted": trusted(address),
                    "kernel": {},
                    "sip": dict.fromkeys(SOURCE_COUNTER_NAMES, 0),
                }
            entry["kernel"] = {name: int_count(counts.get(name)) for name in KERNEL_COUNTER_NAMES}
        return sorted(
            by_address.values(),
            key=lambda s: (
                -(
                    s["sip"]["messages_in"]
                    + s["kernel"].get("passed_pkts", 0)
                    + s["kernel"].get("dropped_untrusted_pkts", 0)
                ),
                s["address"],
            ),
        )

    def _start_fastpath(self) -> bool:
        from clearip.fastpath.manager import FastPathManager, FastPathRequired

        manager = FastPathManager(self.config, self._count)
        try:
            manager.start([str(e.cidr) for e in self._starting_entries()])
        except FastPathRequired as e:
            log.error('cannot start: %s (or set fastpath.enabled = "auto")', e)
            return False
        self.fastpath = manager
        return True

    async def _watch_fastpath(self) -> None:
        """Keep the kernel side as it should be: pinholes closed and re-armed in time, and
        whatever someone removed (nft table, tc filter) or added (an interface) seen to within
        a couple of seconds (SPEC §5)."""
        from clearip.fastpath.manager import WATCHDOG_INTERVAL

        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL)
            fastpath = self.fastpath
            if fastpath is None or self._stopping:
                return
            try:
                found = await asyncio.to_thread(fastpath.probe)
                fastpath.after_probe(found)
                fastpath.tick()
            except Exception:  # a bug here must not end the watch for good
                log.exception("fast path watchdog")

    async def _op_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": __version__}

    async def _op_status(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.status()

    async def _op_reload(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.reload()

    # --- the capture tap (SPEC §6 `capture --decrypted`) ---

    async def _op_tap(self, args: dict[str, Any]) -> dict[str, Any]:
        path = args.get("path")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise OpError("tap: 'path' must be the absolute path of the capture's socket")
        try:
            transports = list(check_transports(args.get("transports") or TRANSPORTS))
        except (TypeError, ValueError) as e:
            raise OpError(f"tap: {e}") from None
        self._taps[path] = transports
        try:
            workers = await self._broadcast("tap", path=path, transports=transports)
        except OpError:
            await self._untap(path)
            raise
        log.info("capture tap on for %s (%s)", path, ", ".join(transports))
        return {"workers": workers}

    async def _op_untap(self, args: dict[str, Any]) -> dict[str, Any]:
        path = args.get("path")
        if not isinstance(path, str):
            raise OpError("untap: 'path' must be the capture's socket path")
        await self._untap(path)
        log.info("capture tap off for %s", path)
        return {}

    async def _untap(self, path: str) -> None:
        self._taps.pop(path, None)
        try:
            await self._broadcast("untap", path=path)
        except OpError as e:
            log.warning("%s (the relay drops the tap itself once the capture is gone)", e)

    # --- the trusted list (SPEC §2 allow/deny/trusted, §5) ---

    def trusted_entries(self) -> list[trust.TrustedEntry]:
        """The whole list; TrustError when the state file cannot be read."""
        return trust.entries(self.config.trust.sources, self.config.control.state_dir)

    def _starting_entries(self) -> list[trust.TrustedEntry]:
        """At start, an unreadable state file must not keep the proxy down: the config's part
        is enforced and the error said loudly (`clearipctl check` says it too)."""
        try:
            return self.trusted_entries()
        except trust.TrustError as e:
            log.error("%s; until then only trust.sources is trusted", e)
            return [trust.TrustedEntry(n, "", "config") for n in self.config.trust.sources]

    async def _op_allow(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            cidr = trust.parse_cidr(str(args.get("cidr", "")))
            async with self._trust_lock:
                new = trust.with_added(self.trusted_entries(), cidr, str(args.get("note", "")))
                await self._apply_trusted(new)
        except trust.TrustError as e:
            raise OpError(str(e)) from None
        log.info("trusted %s%s", cidr, f" ({args['note']})" if args.get("note") else "")
        return {"cidr": str(cidr), "entries": trust.as_json(new)}

    async def _op_deny(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            cidr = trust.parse_cidr(str(args.get("cidr", "")))
            async with self._trust_lock:
                new = trust.without(self.trusted_entries(), cidr)
                await self._apply_trusted(new)
        except trust.TrustError as e:
            raise OpError(str(e)) from None
        log.info("no longer trusted: %s", cidr)
        return {"cidr": str(cidr), "entries": trust.as_json(new)}

    async def _op_trusted(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"entries": trust.as_json(self.trusted_entries())}
        except trust.TrustError as e:
            raise OpError(str(e)) from None

    async def _apply_trusted(self, new: list[trust.TrustedEntry]) -> None:
        """One step for every enforcer, in order, undone in reverse if any of them fails:
        the kernel fast path, the relay workers, then the state file (SPEC §5)."""
        old = [str(e.cidr) for e in self.trusted_entries()]
        cidrs = [str(e.cidr) for e in new]
        done: list[str] = []
        try:
            if self.fastpath is not None:
                self.fastpath.set_trusted(cidrs)
                done.append("fastpath")
            await self._broadcast("trusted", cidrs=cidrs)
            done.append("workers")
            trust.save_state(self.config.control.state_dir, new)
        except Exception as e:
            log.error("trusted-list change failed, rolling back: %s", e)
            if "workers" in done:
                await self._broadcast("trusted", cidrs=old)
            if "fastpath" in done:
                self.fastpath.set_trusted(old)
            raise OpError(f"not applied (rolled back): {e}") from None

    async def _broadcast(self, op: str, *, timeout: float = STATS_TIMEOUT, **args: Any) -> int:
        """Send `op` to every ready worker; how many there were, or OpError naming failures."""
        workers = [w for w in self._workers if w.is_ready]
        results = await asyncio.gather(
            *(w.channel.call(op, timeout=timeout, **args) for w in workers),
            return_exceptions=True,
        )
        failed = [
            f"{w.name}: {r}"
            for w, r in zip(workers, results, strict=True)
            if isinstance(r, BaseException)
        ]
        if failed:
            for line in failed:
                log.error("%s failed in relay %s", op, line)
            raise OpError(f"{op} failed in {'; '.join(failed)}")
        return len(workers)
