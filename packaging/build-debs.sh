#!/usr/bin/env bash
# Build the Debian packages weir-tx and weir-rx with dpkg-deb alone.
#
#   packaging/build-debs.sh [--profile release|debug] [--no-build] [--out DIR]
#
# --profile  which cargo profile's binaries to package (default: release;
#            `debug` is the test profile, target/debug)
# --no-build package the binaries already built (CI packages the ones
#            `cargo test` built) instead of running cargo build first
# --out      where the .deb files go (default: target/debian)
#
# Each package holds:
#   /usr/bin/weir-{tx,rx}                      the program (debug info stripped)
#   /lib/systemd/system/weir-{tx,rx}.service   the hardened unit (systemd/)
#   /etc/weir/weir-{tx,rx}.toml                the example config, a conffile
#   /usr/share/doc/weir-{tx,rx}/               README.md, copyright
# and maintainer scripts (packaging/debian/) that create the system user
# `weir`, /etc/weir/keys, /var/lib/weir and, for weir-tx, /var/spool/weir.
# Nothing is enabled or started: the key must be in place first.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
build=1
out=target/debian
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=${2:?--profile needs release or debug}; shift 2 ;;
    --no-build) build=0; shift ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$profile" in
  release) cargo_profile=(--release) ;;
  debug) cargo_profile=() ;;
  *) echo "--profile must be release or debug, not $profile" >&2; exit 2 ;;
esac

target_dir=${CARGO_TARGET_DIR:-target}
if [ "$build" = 1 ]; then
  cargo build "${cargo_profile[@]}" -p weir-tx -p weir-rx
fi

version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || { echo "no [workspace.package] version in Cargo.toml" >&2; exit 1; }
arch=$(dpkg --print-architecture)
mkdir -p "$out"
out=$(cd "$out" && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# build_one NAME SUMMARY DESCRIPTION
build_one() {
  local name=$1 summary=$2 description=$3
  local bin="$target_dir/$profile/$name"
  local root="$scratch/$name"
  [ -x "$bin" ] || { echo "$bin not found: build it first (or drop --no-build)" >&2; exit 1; }

  install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" \
    "$root/etc/weir" "$root/usr/share/doc/$name"
  install -m 0755 "$bin" "$root/usr/bin/$name"
  strip --strip-debug "$root/usr/bin/$name"
  install -m 0644 "systemd/$name.service" "$root/lib/systemd/system/$name.service"
  install -m 0644 "systemd/$name.toml" "$root/etc/weir/$name.toml"
  install -m 0644 README.md "$root/usr/share/doc/$name/README.md"
  install -m 0644 packaging/debian/copyright "$root/usr/share/doc/$name/copyright"

  for script in postinst prerm postrm; do
    sed "s/@NAME@/$name/g" "packaging/debian/$script" >"$root/DEBIAN/$script"
    chmod 0755 "$root/DEBIAN/$script"
  done
  echo "/etc/weir/$name.toml" >"$root/DEBIAN/conffiles"

  # The newest glibc symbol version the program needs.
  local glibc
  glibc=$(objdump -T "$root/usr/bin/$name" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' \
    | sort -uV | tail -n 1)
  local size
  size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
  cat >"$root/DEBIAN/control" <<CONTROL
Package: $name
Version: $version
Architecture: $arch
Maintainer: Weir maintainers <weir@example.invalid>
Installed-Size: $size
Depends: libc6 (>= ${glibc:-2.34}), libgcc-s1, adduser
Section: net
Priority: optional
Homepage: https://example.invalid/weir
Description: $summary
$description
CONTROL
  dpkg-deb --root-owner-group -Zgzip --build "$root" "$out/${name}_${version}_${arch}.deb" >/dev/null
  echo "$out/${name}_${version}_${arch}.deb"
}

build_one weir-tx "Weir sender: OT side of a one-way data diode link" \
" weir-tx picks up historian exports and files from spool directories, and
 alerts from syslog and followed log files, then batches, compresses,
 encrypts and paces them onto a hardware data diode as UDP datagrams with
 forward error correction. Its partner on the IT side is weir-rx.
 .
 Runs as the system user weir under a hardened systemd unit; the
 pre-shared key is handed over as a systemd credential."

build_one weir-rx "Weir receiver: IT side of a one-way data diode link" \
" weir-rx verifies, reassembles and decrypts what arrives through a hardware
 data diode, commits it to a durable outbox, and publishes it to an MQTT
 broker; every lost record is written down in a gap ledger. Its partner on
 the OT side is weir-tx.
 .
 Runs as the system user weir under a hardened systemd unit; the
 pre-shared key is handed over as a systemd credential."
