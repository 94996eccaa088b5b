"""``scripts/telemetry.env``, the one home of the telemetry switches, read as a dict."""

from __future__ import annotations

from pathlib import Path

TELEMETRY_ENV = Path(__file__).resolve().parents[1] / "scripts" / "telemetry.env"


def telemetry_switches(path: Path = TELEMETRY_ENV) -> dict[str, str]:
    """The ``KEY=VALUE`` lines of ``path`` (blank lines and ``#`` comments skipped)."""
    switches = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            switches[key.strip()] = value.strip()
    return switches
