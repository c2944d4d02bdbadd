# shellcheck shell=bash
# Shell functions shared by scripts/bench.sh and scripts/gpu-check.sh (source it; not run alone).

# md_text_sections FILE...: each file as a markdown section "### <name without .txt>" holding
# its text verbatim in a code block (benchmarks that print their own table, not JSON).
md_text_sections() {
  local text
  for text in "$@"; do
    echo
    echo "### $(basename "$text" .txt)"
    echo
    echo '```'
    cat "$text"
    echo '```'
  done
}
