"""``glsim wait-for URL``: wait until a server started in another shell answers.

A server's port opens well before it serves (on a busy machine the Prefect server answered
after ~20 s, MLflow's after ~40-70 s), so a script that starts one waits on its health URL
before using it: ``/health`` for MLflow, ``/api/health`` for Prefect.
"""

from __future__ import annotations

import argparse
import time
import urllib.error
import urllib.request

from glsim.errors import CommandError


def answers(url: str, *, timeout: float = 2.0) -> bool:
    """Whether ``url`` answers 200 now (a refused or slow connection, or an error status: no).
    Proxies are bypassed: the URL is a server of this cluster."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_for(url: str, *, timeout: float = 120.0, interval: float = 1.0) -> float:
    """Poll ``url`` every ``interval`` seconds until it answers 200; the seconds waited.

    Raises:
        CommandError: it did not answer within ``timeout`` seconds.
    """
    if not url.startswith(("http://", "https://")):
        raise CommandError(f"{url!r} is not an http(s) URL; give the server's health URL, "
                           "e.g. http://127.0.0.1:5000/health (MLflow) or "
                           "http://127.0.0.1:4200/api/health (Prefect)")  # fmt: skip
    start = time.monotonic()
    while True:
        if answers(url, timeout=min(5.0, max(timeout, 0.1))):
            return time.monotonic() - start
        waited = time.monotonic() - start
        if waited >= timeout:
            raise CommandError(
                f"{url} did not answer within {timeout:g} s; check the server's own shell "
                "for its error (a port in use, a database it cannot open), or wait longer "
                "with --timeout"
            )
        time.sleep(min(interval, max(timeout - waited, 0.0)))


def cmd_wait_for(args: argparse.Namespace) -> int:
    waited = wait_for(args.url, timeout=args.timeout, interval=args.interval)
    print(f"{args.url}: up after {waited:.1f} s", flush=True)
    return 0


def add_wait_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "wait-for",
        help="wait until a server's health URL answers (exit 2 after --timeout)",
        description=__doc__,
    )
    p.add_argument(
        "url", help="e.g. http://127.0.0.1:5000/health or http://127.0.0.1:4200/api/health"
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds (default 120)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between tries (default 1)")
    p.set_defaults(func=cmd_wait_for)
