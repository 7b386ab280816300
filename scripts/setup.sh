#!/usr/bin/env bash
# Installs what vaina needs on Debian 12 (run as root). Idempotent: installs only what is
# missing, so it is cheap to call before every build or test run.
set -euo pipefail

packages=(
  iproute2 iputils-ping nftables iptables   # netlink witness, ping, nft for masquerade/hostPorts
  containernetworking-plugins               # reference CNI plugins (/usr/lib/cni) for cross-checks and the bench
  protobuf-compiler                         # CRI types (k8s-cri) for the runtime
  busybox-static crun runc                  # test images and OCI runtimes
  docker-registry apache2-utils openssl     # local registry, htpasswd and token signing for pull tests
  pkg-config gcc
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo (Rust 1.85+) is required" >&2; exit 1; }
