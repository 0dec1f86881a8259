"""``python -m demo start|stop``: the commands, their options, and what they print when they fail.

``start`` refuses (exit 1) while a demo runs in the folder. A start that fails, or is interrupted
(Ctrl-C, SIGTERM, a closed terminal), before Airflow and rtx are up stops what it had started; a
failure of the example run leaves the demo running to be looked at. ``stop`` stops what the state
file records, then the embedded PostgreSQL; with nothing to stop it says so and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time
import traceback
from pathlib import Path
from typing import Any

from demo.launch import UpError, bring_up
from demo.postgres import stop_database
from demo.processes import stop_processes
from demo.progress import DemoError, mask, rel, say, where
from demo.state import State, demo_dir, demo_lock, live_process, stop_command
from testing.pgcluster import postmaster_pid

DESCRIPTION = "the whole of rtx with a real Airflow on this machine (see docs/demo.md)"
# read by the demo itself, never passed on to what it starts
DEMO_SETTINGS = ("RTX_DEMO_DATABASE_URL", "RTX_PG_BIN")


def start(args: argparse.Namespace) -> int:
    root = demo_dir(args.dir)
    began = time.monotonic()
    # the demo reads its own settings here; the processes it starts get none of the caller's
    # RTX_*/AIRFLOW_CONFIG (a stray RTX_DATABASE_URL would point them at another database)
    config = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("RTX_") or k == "AIRFLOW_CONFIG"}
    for key in DEMO_SETTINGS:
        if config.get(key):
            os.environ[key] = config[key]  # read below, then removed again
    state: State | None = None
    say(f"rtx demo: starting in {rel(root)}/")
    # Ctrl-C, SIGTERM or a closed terminal while starting: stop what was started, then exit
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    try:
        with demo_lock(root):
            previous = State.load(root)
            if previous is not None:
                alive = [e for e in previous.processes if live_process(e)]
                if alive:
                    ui = previous.data.get("ui") or "?"
                    raise DemoError(
                        f"a demo is already running ({ui}, {len(alive)} processes from {rel(previous.path)})",
                        f"stop it first with: {stop_command(root)}",
                    )
                say("  (an earlier demo left a state file but no process runs: cleaning it up)")
                stop_database(previous, root, report=False)
                previous.remove()
            state = State(root)
            bring_up(root, state, args.port, args.timeout)
            say(
                f"\nThe demo is running (started in {time.monotonic() - began:.0f}s). Stop it with: {stop_command(root)}"
            )
            return 0
    except (DemoError, Exception, KeyboardInterrupt) as exc:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # the clean-up below is bounded; let it finish
        stack_up = isinstance(exc, UpError)
        if not isinstance(exc, DemoError | KeyboardInterrupt):
            _log_traceback(root, exc)
        if isinstance(exc, KeyboardInterrupt):
            say(f"\nerror: interrupted{f' ({exc})' if str(exc) else ''}")
        elif isinstance(exc, DemoError):
            say(f"\nerror: {exc}")
        else:
            say(
                f"\nerror: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            )
        if not isinstance(exc, KeyboardInterrupt):
            hint = exc.where if isinstance(exc, DemoError) else None
            say(f"  {where(hint) or 'see: ' + rel(root / 'logs') + '/'}")
        if state is not None and (not stack_up or isinstance(exc, KeyboardInterrupt)):
            if state.processes:
                say("  stopping what this start had started:")
            stop_processes(state)
            stop_database(state, root)
            state.remove()
        elif stack_up:
            say(
                f"  the demo keeps running so you can look at it ({state.data.get('ui')}); stop it with: {stop_command(root)}"
            )
        return 1
    finally:
        for key in DEMO_SETTINGS:
            os.environ.pop(key, None)


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _log_traceback(root: Path, exc: BaseException) -> None:
    with contextlib.suppress(OSError):
        (root / "logs").mkdir(parents=True, exist_ok=True)
        with open(root / "logs" / "demo.log", "a") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} start failed\n")
            log.write(mask("".join(traceback.format_exception(exc))))


def stop(args: argparse.Namespace) -> int:
    root = demo_dir(args.dir)
    began = time.monotonic()
    try:
        with demo_lock(root):
            state = State.load(root)
            leftover_pg = postmaster_pid(root / "pg" / "data") is not None
            if state is None and not leftover_pg:
                say(f"rtx demo: nothing to stop (no {rel(root / 'state.json')})")
                return 0
            say(f"rtx demo: stopping {rel(root)}/")
            if state is not None:
                stop_processes(state)
            stop_database(state, root)
            if state is not None:
                state.remove()
    except DemoError as exc:
        say(f"error: {exc}")
        if exc.where:
            say(f"  {where(exc.where)}")
        return 1
    say(
        f"Stopped in {time.monotonic() - began:.1f}s. Data and logs stay in {rel(root)}/ (rm -rf it for a fresh start)."
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir", default=None, help="state, data and logs (default $RTX_DEMO_DIR, else .demo in the checkout)"
    )
    parser = argparse.ArgumentParser(prog="python -m demo", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    start_parser = sub.add_parser(
        "start", parents=[common], help="start everything in the background and run the example DAG"
    )
    start_parser.add_argument("--port", type=int, default=None, help="api-server port (default 8080 if free)")
    start_parser.add_argument(
        "--timeout", type=float, default=180, help="seconds to wait for the example run"
    )
    sub.add_parser("stop", parents=[common], help="stop everything the demo started")
    args = parser.parse_args(argv)
    return start(args) if args.command == "start" else stop(args)
