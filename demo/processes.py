"""The demo's daemons: started detached and recorded, stopped stage by stage by recorded pid.

Start: each process gets its own session (it outlives ``make demo`` and the terminal), no terminal
input, its output in its log; it is recorded in the state file as soon as it exists. Stop: SIGTERM
per stage (``STOP_STAGES``: runners first, so they drain), SIGKILL whatever outlives its stage's
timeout, then the children left behind. Only recorded processes that are still the same process
(pid and start time) are signalled; nothing is looked up or killed by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

from demo.config import STOP_STAGES
from demo.progress import DemoError, say
from demo.state import State, live_process


def spawn(
    state: State, name: str, role: str, argv: list[str], env: dict[str, str], cwd: Path, log: Path
) -> subprocess.Popen:
    """Start a detached daemon (own session, no terminal, output to ``log``) and record it."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    state.record(name, role, proc.pid, log)
    return proc


def _last_line(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def exited(name: str, proc: subprocess.Popen, log: Path) -> DemoError:
    """The error for a daemon that ended while it should run: its exit code and its log's last line."""
    last = _last_line(log)
    return DemoError(f"{name} exited with code {proc.returncode}" + (f": {last}" if last else ""), log)


def _signal(proc: psutil.Process, sig: int, group: bool) -> None:
    with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
        if group and os.getpgid(proc.pid) == proc.pid and proc.is_running():
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)


def stop_processes(state: State, report: bool = True) -> None:
    """SIGTERM the recorded processes stage by stage, SIGKILL whatever outlives its stage's timeout."""
    for roles, timeout in STOP_STAGES:
        entries = [e for e in state.processes if e["role"] in roles]
        running: dict[int, tuple[dict, psutil.Process, list[psutil.Process]]] = {}
        for entry in entries:
            proc = live_process(entry)
            if proc is None:
                if report:
                    say(f"  {entry['name']:<14} pid {entry['pid']:<8} was not running")
                continue
            children: list[psutil.Process] = []
            with contextlib.suppress(psutil.Error):
                children = proc.children(recursive=True)
            # a runner drains on SIGTERM and stops its own tasks; Airflow's components get it as a group
            _signal(proc, signal.SIGTERM, group=entry["role"] not in ("runner", "allocator"))
            running[proc.pid] = (entry, proc, children)
        if not running:
            continue
        started = time.monotonic()
        ended: dict[int, float] = {}
        _gone, alive = psutil.wait_procs(
            [p for _, p, _ in running.values()],
            timeout=timeout,
            callback=lambda p, ended=ended, started=started: ended.__setitem__(
                p.pid, time.monotonic() - started
            ),
        )
        for proc in alive:
            _signal(proc, signal.SIGKILL, group=True)
        psutil.wait_procs(alive, timeout=10)
        # children (warm task processes, workers) normally end with their parent; give them a moment
        _gone, stragglers = psutil.wait_procs([c for _, _, kids in running.values() for c in kids], timeout=5)
        leftovers = 0
        for child in stragglers:
            with contextlib.suppress(psutil.Error):
                child.kill()  # psutil checks it is still the same process (no reused pid)
                leftovers += 1
        for pid, (entry, _proc, _children) in running.items():
            if not report:
                continue
            if pid in ended:
                say(f"  {entry['name']:<14} pid {pid:<8} stopped ({ended[pid]:.1f}s)")
            else:
                say(f"  {entry['name']:<14} pid {pid:<8} killed: still running after {timeout}s")
        if leftovers and report:
            say(f"  {'':<14} {'':<12} killed {leftovers} leftover child process(es)")
