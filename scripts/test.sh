#!/usr/bin/env bash
# Set up and run the whole test suite, real DCMTK and Orthanc peers included.
# The tests run inside a private network namespace that has only loopback (`unshare --net`),
# so servers they start (Orthanc binds every interface) are reachable from nowhere else.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
run_tests() {
  set +e
  .venv/bin/python -m pytest "$@"
  rc=$?
  set -e
  if [ "$rc" = 5 ]; then echo "test.sh: pytest collected no tests: failing" >&2; exit 1; fi
  exit "$rc"
}
if [ "${DICOM_GATEWAY_NO_NETNS:-0}" != 1 ] && unshare --net true 2>/dev/null; then
  export -f run_tests
  exec unshare --net bash -c 'ip link set lo up && run_tests "$@"' test.sh "$@"
fi
echo "test.sh: cannot create a private network namespace; tests that need one will skip" >&2
run_tests "$@"
