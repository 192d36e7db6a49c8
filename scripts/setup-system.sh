#!/usr/bin/env bash
# System packages the tests use, from Debian's registry (needs root; skipped otherwise):
#   bubblewrap  the code sandbox's strongest isolation (no network, read-only root, private /tmp)
#   libseccomp2 the code sandbox's syscall filter (loaded through ctypes; most systems have it)
#   slurm-wlm   a real local Slurm for tests/test_slurm.py (the tests start and stop it)
#   chromium, chromium-driver  a real headless browser for the explorer page tests (Selenium drives it)
# Without them the sandbox falls back to weaker isolation and the Slurm and page tests skip.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "setup-system: not root: skipping bubblewrap and slurm (sandbox falls back, Slurm tests skip)" >&2
  exit 0
fi
if ! { command -v bwrap && command -v slurmctld && command -v munged && command -v chromedriver \
       && ldconfig -p | grep 'libseccomp\.so\.2'; } \
    >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends bubblewrap libseccomp2 slurmctld slurmd slurm-client munge \
    chromium chromium-driver >/dev/null
fi
