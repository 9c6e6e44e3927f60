#!/usr/bin/env bash
# dpbench: run the study (all frameworks or some), or the tests.
#
#   ./run_all.sh                      full study, every framework, then the report
#                                     (README: Presets gives each preset's measured time)
#   ./run_all.sh jax [torch tf]       only these frameworks
#   ./run_all.sh --preset quick       quick (small model, B 64, 3 rounds, no analyses) | full | tiny (CI)
#                                     | gpu (NVIDIA GPU: small, medium, WRN-16-4 at B 64 and 256; refused on a CPU)
#                                     | scaling (1 and 2 data-parallel devices; --devices 1,2,4 on GPUs)
#                                     | wrn (WRN-16-4 + GroupNorm) | vit (the ViT, B 32 and 64, and its sequence-length
#                                     sweep, patches 8 and 2) | deployed (DP-SGD as trained: Poisson
#                                     sampling, padding, large logical batches; common/harness/deployed.py,
#                                     run by the same runner)
#   ./run_all.sh --accelerator cuda   which builds run: auto (default: cuda where nvidia-smi lists a GPU,
#                                     else cpu) | cpu | cuda (each framework's CUDA environment, .venvs/<fw>-cuda,
#                                     from common/harness/locks/<fw>-cuda.txt; refused without a GPU)
#   ./run_all.sh --out results/NAME   run directory (default results/<preset>-<UTC time>)
#   ./run_all.sh --resume --out DIR   continue an interrupted run in DIR (same settings only)
#   ./run_all.sh --allow-dirty        run from uncommitted changes (records say -dirty)
#   ./run_all.sh --test [FRAMEWORK..] run the test suites, each in its framework's environment
#   ./run_all.sh --no-analysis        skip the analyses (the "why" of every JAX impl, fastclip's
#                                     per-layer timings) that otherwise follow a run
#   ./run_all.sh --analyses jax,torch,tf   which frameworks' impls the "why" covers (default jax;
#                                     all three took 3 min 42 s on a 2-core Xeon)
#
# Any other option is passed to `python -m common.harness.runner` (see --help there:
# --models, --impls, --batch-sizes, --microbatch-sizes, --budget-s, --threads,
# --devices, --repeats, --rounds N (repeat rounds, each configuration in a fresh process),
# --window-s, --clip-norm, --noise-multiplier, --phases, --find-max-batch, --mem-limit).
# A numeric value may be negative (--budget-s -1): the runner says what is wrong with it.
# Needs only python3.11 (with venv and pip): each framework gets its own
# pinned virtual environment under .venvs/ on first use (common/harness/envs.py).
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY=$cand; break
    fi
  done
fi
[[ -n "$PY" ]] || { echo "error: Python 3.11 is required (TF-Privacy 0.9.0 supports < 3.12); set PYTHON=/path/to/python3.11" >&2; exit 2; }

usage() { awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0" | sed 's/^# \{0,1\}//'; }

orig_args=("$@")   # the command line as given, for the resume hint
frameworks=(); runner_args=(); test_mode=0; preset=full; out=""; out_given=0; resume_given=0; analysis=1; analyses=jax
accelerator=auto
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --test) test_mode=1 ;;
    --no-analysis) analysis=0 ;;
    --preset) [[ $# -ge 2 ]] || { echo "error: --preset needs a value" >&2; exit 2; }; preset=$2; shift ;;
    --preset=*) preset=${1#*=} ;;
    --out) [[ $# -ge 2 ]] || { echo "error: --out needs a value" >&2; exit 2; }; out=$2; out_given=1; shift ;;
    --out=*) out=${1#*=}; out_given=1 ;;
    --analyses) [[ $# -ge 2 && "$2" != -* ]] || { echo "error: --analyses needs a value" >&2; exit 2; }; analyses=$2; shift ;;
    --analyses=*) analyses=${1#*=} ;;
    --accelerator) [[ $# -ge 2 && "$2" != -* ]] || { echo "error: --accelerator needs a value (auto, cpu, cuda)" >&2; exit 2; }
        accelerator=$2; shift ;;
    --accelerator=*) accelerator=${1#*=} ;;
    jax|torch|tf) frameworks+=("$1") ;;
    # The runner's flags that take no value: never swallow the next word.
    --resume) runner_args+=("$1"); resume_given=1 ;;
    --no-progress|--phases|--verify|--find-max-batch|--dry-run|--allow-dirty) runner_args+=("$1") ;;
    --*=*) runner_args+=("$1") ;;
    # A value is the next word unless it is an option; a negative number (-1, -0.5: what
    # argparse takes as a value) goes to the runner, whose --dry-run below says what is wrong.
    -*) [[ $# -ge 2 && ( "$2" != -* || "$2" =~ ^-([0-9]+|[0-9]*\.[0-9]+)$ ) ]] || { echo "error: $1 needs a value" >&2; exit 2; }
        runner_args+=("$1" "$2"); shift ;;
    *) echo "error: unknown framework or argument '$1' (frameworks: jax, torch, tf)" >&2; exit 2 ;;
  esac
  shift
done
[[ ${#frameworks[@]} -gt 0 ]] || frameworks=(jax torch tf)
for f in ${analyses//,/ }; do
  case "$f" in jax|torch|tf) ;; *) echo "error: --analyses: unknown framework '$f' (jax, torch, tf)" >&2; exit 2 ;; esac
done

env_python() { "$PY" -m common.harness.envs ensure "$1"; }

if [[ $test_mode -eq 1 ]]; then
  # Two lanes at once (DPBENCH_TEST_LANES=1: one after another), each provisioning a suite's
  # environment right before running it: each suite is one process in its own environment,
  # mostly one thread, so two lanes keep both cores of a 2-core machine busy, and one lane's
  # pip install (mostly waiting on disk and unpacking) overlaps the other lane's tests instead
  # of every install running first. The lanes are balanced by the suites' measured times
  # (README: Tests): jax + torch | common + tf.
  status=0
  suites=(common); for fw in "${frameworks[@]}"; do suites+=("$fw"); done
  env_of() { [[ "$1" == common ]] && echo study || echo "$1"; }
  logs=$(mktemp -d)
  run_lane() {  # suites, one after another: provision its environment, then run it
    local s py t0
    for s in "$@"; do
      t0=$SECONDS; echo "[run_all] tests/$s: provisioning .venvs/$(env_of "$s") if needed, then testing..." >&2
      if ! py=$(env_python "$(env_of "$s")" 2>"$logs/$s.env"); then
        { cat "$logs/$s.env"; echo "error: could not provision the $(env_of "$s") environment"; } >"$logs/$s.log"
        echo 1 >"$logs/$s.rc"; echo $((SECONDS - t0)) >"$logs/$s.env_s"; echo 0 >"$logs/$s.s"; continue
      fi
      echo $((SECONDS - t0)) >"$logs/$s.env_s"; t0=$SECONDS
      "$py" -m pytest "tests/$s" -q -p no:cacheprovider >"$logs/$s.log" 2>&1; echo $? >"$logs/$s.rc"   # exit 5 (no tests) fails too
      echo $((SECONDS - t0)) >"$logs/$s.s"; echo "[run_all] tests/$s: finished ($(tail -n 1 "$logs/$s.log"))" >&2
    done
  }
  lane_a=(); lane_b=()
  for s in "${suites[@]}"; do
    if [[ "${DPBENCH_TEST_LANES:-2}" == 1 ]]; then lane_a+=("$s")
    else case "$s" in jax|torch) lane_a+=("$s") ;; *) lane_b+=("$s") ;; esac; fi
  done
  t0=$SECONDS
  run_lane "${lane_a[@]+"${lane_a[@]}"}" & pid_a=$!
  run_lane "${lane_b[@]+"${lane_b[@]}"}" & pid_b=$!
  trap 'kill $pid_a $pid_b 2>/dev/null; exit 130' INT
  wait $pid_a $pid_b || true
  for s in "${suites[@]}"; do
    echo "=== tests/$s (.venvs/$(env_of "$s"): provisioned in $(cat "$logs/$s.env_s" 2>/dev/null || echo '?') s, tests $(cat "$logs/$s.s" 2>/dev/null || echo '?') s) ==="
    cat "$logs/$s.log" 2>/dev/null
    [[ "$(cat "$logs/$s.rc" 2>/dev/null)" == 0 ]] || { status=1; echo "FAILED: tests/$s"; }
  done
  echo "[run_all] tests: $((SECONDS - t0)) s for ${#suites[@]} suites in ${DPBENCH_TEST_LANES:-2} lanes, provisioning included"
  # One closing line over every suite (pytest's last line of each, summed; a crashed suite counts as failed).
  passed=0; failed=0
  for s in "${suites[@]}"; do
    last=$(tail -n 1 "$logs/$s.log" 2>/dev/null)
    p=$(grep -o '[0-9]* passed' <<<"$last" | grep -o '[0-9]*' || true); passed=$((passed + ${p:-0}))
    f=0; for n in $(grep -oE '[0-9]+ (failed|errors?)' <<<"$last" | grep -oE '[0-9]+' || true); do f=$((f + n)); done
    [[ "$(cat "$logs/$s.rc" 2>/dev/null)" == 0 || $f -gt 0 ]] || f=1
    failed=$((failed + f))
  done
  echo "total: $passed passed, $failed failed"
  rm -rf "$logs"
  exit $status
fi

# Which builds the run measures (common/harness/accel.py): cuda, each framework's CUDA environment,
# where an NVIDIA GPU is found (auto) or --accelerator cuda asks for it (refused in one line without
# one), else cpu. The runner, the environments and the analyses read it from DPBENCH_ACCELERATOR.
DPBENCH_ACCELERATOR=$("$PY" -m common.harness.accel choose "$accelerator") || exit 2
export DPBENCH_ACCELERATOR
[[ -n "$out" ]] || out="results/${preset}-$(date -u +%Y%m%dT%H%M%SZ)"
# How to continue an interrupted run: the command line as given (each word shell-quoted),
# plus --resume and --out DIR where it lacked them. Printed on Ctrl-C (trap and runner exit 130).
resume_cmd="./run_all.sh"
[[ ${#orig_args[@]} -eq 0 ]] || resume_cmd+=$(printf ' %q' "${orig_args[@]}")
[[ $resume_given -eq 1 ]] || resume_cmd+=" --resume"
[[ $out_given -eq 1 ]] || resume_cmd+=" --out $(printf '%q' "$out")"
resume_hint() { echo "[run_all] interrupted; continue with: $resume_cmd" >&2; }
# Test hook (tests/common/harness/test_cli.py): print the resume command and stop, before
# validating, provisioning or running anything.
[[ "${DPBENCH_PRINT_RESUME_HINT:-}" != 1 ]] || { echo "$resume_cmd"; exit 0; }
fw_csv=$(IFS=,; echo "${frameworks[*]}")
# What the run's first stage is: the runner, with the parity table for the study's presets
# (--preset deployed: DP-SGD as trained, the same runner's deployed rows, then the report).
if [[ "$preset" == deployed ]]; then
  stage_cmd=(-m common.harness.runner --frameworks "$fw_csv" --preset deployed --out "$out"
             "${runner_args[@]+"${runner_args[@]}"}"); stage_name="deployed rows"
else
  stage_cmd=(-m common.harness.runner --frameworks "$fw_csv" --preset "$preset" --out "$out" --verify
             "${runner_args[@]+"${runner_args[@]}"}"); stage_name="study and parity"
fi
# Validate everything (frameworks, preset, sizes, output path) before provisioning or writing anything.
"$PY" "${stage_cmd[@]}" --dry-run >/dev/null
study_py=$(env_python study)
for fw in "${frameworks[@]}"; do env_python "$fw" >/dev/null; done
# Ctrl-C stops everything at once (the runner kills its worker's process group and
# exits 130; the analyses are never started); the records written so far stay.
trap 'resume_hint; exit 130' INT
# Each stage's wall time (whole seconds) goes to $out/stages.tsv, which the report renders.
stage_done() {  # name, start ($SECONDS)
  [[ -d "$out" ]] && printf '%s\t%d\n' "$1" $((SECONDS - $2)) >> "$out/stages.tsv"
  return 0
}
t0=$SECONDS
"$study_py" "${stage_cmd[@]}" || rc=$?
# The command that made (or continued) the run, for results/INDEX.md (common/report/index.py).
[[ ${rc:-0} -eq 2 || ! -d "$out" ]] || printf '%s\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  "./run_all.sh$([[ ${#orig_args[@]} -eq 0 ]] || printf ' %q' "${orig_args[@]}")" >> "$out/commands.tsv"
[[ ${rc:-0} -eq 130 || ${rc:-0} -eq 2 ]] || stage_done "$stage_name" $t0
[[ ${rc:-0} -ne 130 ]] || { resume_hint; exit 130; }
[[ ${rc:-0} -ne 2 ]] || exit 2   # refused (bad input, dirty tree, mixed settings): nothing was run
[[ "$preset" != deployed ]] || { "$study_py" -m common.report "$out"; exit "${rc:-0}"; }
is_search=0; for a in "${runner_args[@]+"${runner_args[@]}"}"; do [[ "$a" == --find-max-batch ]] && is_search=1; done
# The analyses' scope: B 64 on the small model where the preset has it (what fits the full
# preset's hour; --models widens it, e.g. --models small,medium), else on the preset's models
# (wrn: wrn16_4); none for quick (a first look, and the preset run twice to check that the
# study reproduces), tiny (CI), scaling (its question is the device count; the analyses
# are of one device) and gpu (sized for a short slot on a GPU).
# Per preset, which models the "why" covers, whether it runs at all, and the (model, batch)
# cells of the per-layer timings are data in common/harness/config.py (Preset.layer_cells,
# Preset.explain; analysis_plan): vit times its three points of T per layer and runs no "why"
# (its question is the per-layer one; the canonical session stays short).
case "$preset" in quick|tiny|scaling|gpu) analysis=0 ;; esac
models_given=""
for ((i = 0; i < ${#runner_args[@]}; i++)); do
  case "${runner_args[i]}" in --models) models_given=${runner_args[i+1]} ;; --models=*) models_given=${runner_args[i]#*=} ;; esac
done
plan=$("$study_py" -c "import sys; from common.harness.config import analysis_plan
p = analysis_plan(sys.argv[1], [m for m in sys.argv[2].split(',') if m] or None)
print(','.join(p['models']), int(p['explain']), ','.join(p['layer_cells']), sep='\t')" "$preset" "$models_given")
IFS=$'\t' read -r models explain cells <<<"$plan"
if [[ $analysis -eq 1 && $is_search -eq 0 && -d "$out" ]]; then
  # Why each row is as fast and as large as it is (report sections); after the timed runs, alone.
  # the analysed frameworks: those asked for (--analyses) that the run measured
  why=$(for f in ${analyses//,/ }; do [[ " ${frameworks[*]} " == *" $f "* ]] && echo "$f"; done | paste -sd, -)
  [[ $explain -eq 1 ]] || why=""
  if [[ -n "$why" ]]; then
    t0=$SECONDS
    "$study_py" -m common.report.explain "$out/explain.md" --frameworks "$why" --models "$models" --batch-size 64 \
        --timeout 300 || rc=${rc:-$?}
    stage_done "analyses ($why)" $t0
  fi
  # fastclip's per-layer timings: the frameworks with a port (jax, torch, tf) that the run measured
  ports=$(for f in jax torch tf; do [[ " ${frameworks[*]} " == *" $f "* ]] && echo "$f"; done | paste -sd, -)
  if [[ -n "$ports" ]]; then
    t0=$SECONDS
    "$study_py" -m common.report.layer_timing "$out" --frameworks "$ports" --cells "$cells" \
        >/dev/null || rc=${rc:-$?}
    stage_done "fastclip per-layer timing ($ports)" $t0
  fi
fi
"$study_py" -m common.report "$out"
exit "${rc:-0}"
