#!/usr/bin/env bash
# Installs the Debian 12 packages that the build, the tests and bench/ need.
# Safe to re-run: when everything is already installed it does nothing but check.
set -euo pipefail

packages=(
  build-essential       # g++ 12; OpenMP comes from its libgomp, so no libomp-dev
  cmake pkg-config git
  libdnnl-dev
  ocl-icd-opencl-dev    # Debian's dnnl-config.cmake does find_package(OpenCL REQUIRED);
                        # it is only a Recommends of libdnnl-dev, which we skip
  libeigen3-dev libcli11-dev doctest-dev nlohmann-json3-dev libstb-dev
  libopenmpi-dev openmpi-bin  # data parallelism (TLCPU_WITH_MPI): the mpi tests and bench
  python3 python3-torch python3-torchvision python3-numpy  # bench/ and fixture regeneration
  clang-14 libclang-rt-14-dev  # libFuzzer and its sanitizers for tests/fuzz/ (g++ has no libFuzzer)
  strace                # the crash drill injects kills and ENOSPC into checkpoint writes
)

# Only the ones missing, so a re-run skips apt-get update, which is the slow part.
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
echo "install-deps: installing ${missing[*]}"
"${sudo[@]}" apt-get update
"${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
