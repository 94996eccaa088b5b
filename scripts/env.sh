# Source in every shell of the cluster walkthrough (docs/operations.md): `. scripts/env.sh`
# from the repository root. Servers and workers started from such a shell send no
# telemetry (a sandboxed or offline host otherwise logs `Failed to send telemetry` errors);
# these are the switches the Makefile exports and `import glsim` sets for glsim's own
# processes. Then it activates .venv/ when there is one.
export NO_ALBUMENTATIONS_UPDATE=1
export MLFLOW_DISABLE_TELEMETRY=true
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export DO_NOT_TRACK=1
export DVC_NO_ANALYTICS=1
export HF_HUB_OFFLINE=1
if [ -f .venv/bin/activate ]; then
  . .venv/bin/activate
fi
