#!/usr/bin/env bash
# Builds the Debian package with cargo-deb: a release build, the manual pages (gzipped) and
# completions it generates, and the systemd unit pointed at /usr/bin. Prints the .deb's path.
# Run from anywhere: packaging/deb.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source packaging/lib.sh
ensure_cargo
ensure_cargo_deb
# msgfmt compiles the translations the package ships.
command -v msgfmt >/dev/null || { [[ $(id -u) == 0 ]] && ensure_packages gettext; }

cargo build --release --locked >&2
out=target/deb-assets
rm -rf "$out"
generate_docs target/release/guilocker "$out"
gzip -9n "$out"/man/*
compile_translations "$out/locale"
mkdir -p "$out/unit"
# A relative link, so cargo-deb keeps it a link (it copies what a link points at when that
# exists here): /usr/sbin/umount.guilocker -> /usr/bin/guilocker. libmount looks in /sbin,
# which is /usr/sbin on a merged /usr (Debian 12 on).
ln -sfn ../bin/guilocker "$out/umount.guilocker"
sed 's|/usr/local/bin/guilocker|/usr/bin/guilocker|' packaging/systemd/guilocker.service \
  > "$out/unit/guilocker.service"
rm -rf target/debian
cargo deb --no-build --locked >&2
ls target/debian/guilocker_*.deb
