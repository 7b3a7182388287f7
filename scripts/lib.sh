# Shared by ./fcvm and scripts/test.sh: install what fcvm needs from Debian's packages (first
# use only, via apt-get: the machine's own apt sources, no mirror named here) and build.

[ -d "$HOME/.cargo/bin" ] && PATH="$HOME/.cargo/bin:$PATH"
FCVM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
AGENT_TARGET=x86_64-unknown-linux-gnu

# command:package pairs needed to run VMs.
RUN_DEPS="qemu-system-x86_64:qemu-system-x86 crun:crun mkfs.erofs:erofs-utils mkfs.ext4:e2fsprogs depmod:kmod cpio:cpio dpkg-deb:dpkg busybox:busybox-static passt:passt ip:iproute2 iptables:iptables"
# extra pairs the test suite needs (a real registry on loopback, skopeo to push to it,
# containerd and script(1) for the containerd shim's tests, protoc for its CRI client).
TEST_DEPS="skopeo:skopeo docker-registry:docker-registry containerd:containerd script:bsdutils protoc:protobuf-compiler"

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

ensure_packages() {
    local missing=""
    for pair in "$@"; do
        have "${pair%%:*}" || missing="$missing ${pair#*:}"
    done
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "fcvm needs these Debian packages:$missing" >&2
        echo "install them with: sudo apt-get install$missing" >&2
        return 1
    fi
    echo "==> Installing Debian packages:$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends $missing >&2; then
        echo "==> apt-get update, then retrying" >&2
        apt-get update -q >&2
        apt-get install -y -q --no-install-recommends $missing >&2
    fi
}

# The host binary and the static guest agent (docs/design.md §6: crt-static with an explicit --target,
# so the flag does not reach proc-macro crates).
build_all() {
    local profile=${1:-release}
    echo "==> Building fcvm and fc-agent (cargo, incremental)" >&2
    (cd "$FCVM_ROOT" &&
        cargo build -q --profile "$profile" -p fcvm --bins >&2 &&
        RUSTFLAGS='-C target-feature=+crt-static' \
            cargo build -q --profile agent -p fc-agent --target "$AGENT_TARGET" >&2)
    export FCVM_AGENT="$FCVM_ROOT/target/$AGENT_TARGET/agent/fc-agent"
}
