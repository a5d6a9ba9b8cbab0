"""Several processes of one sweep: process ids, the coordinator, and waits that end with
one line (never jax's C++ abort) after --coordinator-timeout."""

from __future__ import annotations

import errno
import os
import re
import socket
import sys
import threading
import time

from emu.cli._parser import CliError

#: exit status of a coordinator wait that ran out (bad input: the other processes)
TIMEOUT_STATUS = 2


def _watchdog(coord: str, pid: int, nproc: int, timeout_s: float) -> threading.Timer:
    """A timer that, unless cancelled within `timeout_s`, prints one line and ends the
    process (jax's initialise would otherwise abort it with a C++ stack trace)."""
    who = "the other processes" if pid == 0 else "the coordinator (process 0)"

    def expire() -> None:
        print(
            f"emu: error: process {pid} of {nproc}: {who} did not connect to {coord} within "
            f"{timeout_s:g} s; start every process (same command, --process-id 0..{nproc - 1}) "
            "or raise --coordinator-timeout.",
            file=sys.stderr,
            flush=True,
        )
        os._exit(TIMEOUT_STATUS)

    t = threading.Timer(timeout_s, expire)
    t.daemon = True
    t.start()
    return t


def processes(args) -> tuple[int, int]:
    """(process id, process count), with jax.distributed initialised when there are
    several (the coordinator wait is bounded by --coordinator-timeout)."""
    coord = args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    try:
        nproc = args.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "1"))
        pid = args.process_id
        pid = pid if pid is not None else int(os.environ.get("JAX_PROCESS_ID", "0"))
    except ValueError:
        raise CliError("JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers.") from None
    if nproc < 1 or not 0 <= pid < nproc:
        raise CliError(f"--process-id must be in [0, {nproc}) (got {pid}).")
    if nproc == 1 and args.coordinator_timeout is not None:  # accepted and ignored
        raise CliError(
            "--coordinator-timeout bounds the wait for the processes of a sweep of several; "
            "give --num-processes N (N > 1), or drop it."
        )
    wait_s = args.coordinator_timeout or 120
    if nproc == 1 and args.coordinator:  # it was accepted and ignored
        raise CliError(
            "--coordinator joins a sweep of several processes; give --num-processes N (N > 1) "
            "and --process-id on each, or drop --coordinator."
        )
    if nproc > 1:
        if not coord:
            raise CliError("several processes need --coordinator HOST:PORT.")
        # every process, process 0 too: jax's server crashes (a segmentation fault) on a
        # port it cannot bind
        host, port = _host_port(coord)
        if pid == 0:
            _check_bindable(coord, port)
        else:  # jax aborts the process (C++) when the coordinator never answers
            _wait_for_coordinator(coord, host, port, wait_s)
        import jax

        timeout = wait_s
        # jax aborts the process (C++, a stack trace) when the wait runs out: a watchdog
        # ends it first with one line; jax's own limit is a little later
        watchdog = _watchdog(coord, pid, nproc, timeout)
        try:
            jax.distributed.initialize(
                coordinator_address=coord,
                num_processes=nproc,
                process_id=pid,
                initialization_timeout=int(timeout) + 10,
            )
        except Exception as e:  # noqa: BLE001 - jax raises several types; one line for all
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CliError(
                f"cannot reach the coordinator {coord} within {wait_s} s "
                f"({first}); start every process, or raise --coordinator-timeout."
            ) from None
        finally:
            watchdog.cancel()
    return pid, nproc


def _host_port(coord: str) -> tuple[str, int]:
    """(host, port) of a HOST:PORT coordinator address ([v6]:PORT too); CliError unless the
    host is a name or address (no spaces) and the port a whole number in 1-65535 (ASCII
    digits: jax takes no other)."""
    host, sep, port = coord.rpartition(":")
    host = host.strip("[]")
    ok = sep and host and not any(c.isspace() for c in host)
    if not ok or not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        raise CliError(
            "--coordinator (or JAX_COORDINATOR_ADDRESS) expects HOST:PORT with a port in "
            f"1-65535, e.g. node0:1234 (got '{coord}')."
        )
    return host, int(port)


def _check_bindable(coord: str, port: int) -> None:
    """Process 0 serves the coordinator on every interface at `port`: CliError when that
    port cannot be bound (taken, or privileged), which jax's server answers with a crash."""
    for family, addr in ((socket.AF_INET6, "::"), (socket.AF_INET, "")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                # as gRPC binds: a port whose last connections linger (TIME_WAIT) is free,
                # one another process listens on is not
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((addr, port))
            return
        except OSError as e:
            if family == socket.AF_INET6 and e.errno == errno.EAFNOSUPPORT:
                continue  # no IPv6 on this machine: the IPv4 bind decides
            raise CliError(
                f"process 0 cannot serve the coordinator on port {port} of {coord} "
                f"({e.strerror}); free the port or give --coordinator another one."
            ) from None


def _wait_for_coordinator(coord: str, host: str, port: int, timeout_s: float) -> None:
    """Return once a TCP connection to HOST:PORT succeeds; CliError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise CliError(
                    f"cannot reach the coordinator {coord} within {timeout_s:g} s; start "
                    "process 0 first, or raise --coordinator-timeout."
                ) from None
            time.sleep(0.2)
