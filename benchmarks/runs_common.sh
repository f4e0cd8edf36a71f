# Sourced by the benchmark run scripts (external_runs.sh, segmentation_runs.sh): where the data
# and the tools are (overridable from the environment), and `timed NAME CMD...`, which prints
# NAME's wall time and peak RSS after CMD.
SHARED=${SHARED:-../shared/data}
MRI=${MRI:-.venv/bin/mritumor}
PY=${PY:-.venv/bin/python}
timed() { /usr/bin/time -f "$1: %e s wall, peak RSS %M KB" "${@:2}"; }
