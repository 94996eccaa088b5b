# Source in every shell of the cluster walkthrough (docs/operations.md): `. scripts/env.sh`
# from the repository root. It exports the telemetry switches of scripts/telemetry.env
# (the ones the Makefile exports and `import glsim` sets for glsim's own processes), so
# servers and workers started from such a shell send no telemetry (a sandboxed or offline
# host otherwise logs `Failed to send telemetry` errors). It names Prefect's logging config,
# scripts/prefect-logging.yml: a failed run that glsim expects (bad input, a tracking server
# down) is one line in a worker's or the sweep's log, not a traceback. Then it activates
# .venv/ when there is one.
_glsim_root=$(cd "$(dirname "${BASH_SOURCE:-$0}")/.." 2>/dev/null && pwd)
[ -f "$_glsim_root/scripts/telemetry.env" ] || _glsim_root=$PWD  # a shell without BASH_SOURCE
set -a
. "$_glsim_root/scripts/telemetry.env"
set +a
export PREFECT_LOGGING_SETTINGS_PATH="$_glsim_root/scripts/prefect-logging.yml"
if [ -f "$_glsim_root/.venv/bin/activate" ]; then
  . "$_glsim_root/.venv/bin/activate"
fi
unset _glsim_root
