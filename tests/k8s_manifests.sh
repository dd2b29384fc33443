#!/usr/bin/env bash
# examples/k8s/*.yaml validate, strictly (no unknown fields), against Kubernetes' own schemas (kubernetes-validate,
# installed by scripts/setup.sh). The MPIJob's custom kind has no schema there and is reported as such; the rest
# of that file is checked.
. "$(dirname "$0")/lib.sh"
tool=${SOVTRAIN_TOOLS:-$HOME/.local/share/sovtrain/tools}/bin/kubernetes-validate
if [ ! -x "$tool" ]; then
    echo "SKIP: $tool missing (scripts/setup.sh installs it)"
    exit 77
fi
for f in "$TESTS"/../examples/k8s/*.yaml; do
    out=$("$tool" --strict -k 1.30.0 "$f" 2>&1) || fail "$(basename "$f"): $out"
    grep -q "^ERROR" <<<"$out" && fail "$(basename "$f"): $out"
    echo "$out"
done
finish
