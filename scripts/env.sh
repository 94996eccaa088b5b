# Source in every shell of the cluster walkthrough (docs/operations.md): `. scripts/env.sh`
# from the repository root. It exports the telemetry switches of scripts/telemetry.env
# (the ones the Makefile exports and `import glsim` sets for glsim's own processes), so
# servers and workers started from such a shell send no telemetry (a sandboxed or offline
# host otherwise logs `Failed to send telemetry` errors). Then it activates .venv/ when
# there is one.
set -a
. scripts/telemetry.env
set +a
if [ -f .venv/bin/activate ]; then
  . .venv/bin/activate
fi
