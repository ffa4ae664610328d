#!/usr/bin/env bash
# Installs mfglab's build and run dependencies from Debian's packages, and any packages named
# on the command line (the tests' and the fuzzers' own); does nothing when everything is
# already installed.
# usage: scripts/setup.sh [EXTRA_PACKAGE...]
set -euo pipefail

PACKAGES=(
  cmake g++ make binutils            # toolchain (nm checks exported symbols)
  libtorch-dev                        # tensors and autograd
  libboost-dev libboost-filesystem-dev  # Boost.DLL plugin loading
  nlohmann-json3-dev libfmt-dev libtbb-dev libcli11-dev
  catch2                              # tests (v2)
  libopenblas0-pthread                # without it Debian's BLAS is the reference one, 4-8x slower
  libblas-dev                         # link-time libblas.so for <mfglab/blas.h> (runs on OpenBLAS)
  libdnnl-dev                         # oneDNN's float GEMM for LibTorch (engine/src/running/gemm_backend.cpp)
  libcairo2-dev pkg-config            # PNG figures of runs and comparisons (engine/src/figures/plot.cpp)
  libopenmpi-dev openmpi-bin          # sweeps across machines (engine/src/running/mpi_sweep.cpp)
)
PACKAGES+=("$@")

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "mfglab setup: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
