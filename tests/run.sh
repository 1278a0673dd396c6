#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing (Debian 12), builds, then runs the unit
# tests and the end-to-end tests (real dislocker, real loop devices, real mounts, real GTK).
# Needs root. Under CI=true an end-to-end test that lacks a prerequisite fails instead of
# skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
source packaging/lib.sh

if [[ $(id -u) != 0 ]]; then
  echo "tests/run.sh: needs root (loop devices, FUSE and mounts); run: sudo tests/run.sh" >&2
  exit 1
fi

packages=(
  dislocker ntfs-3g exfat-fuse exfatprogs fusefat dosfstools mtools fdisk util-linux xz-utils
  pkg-config libgtk-4-dev libadwaita-1-dev libsecret-1-dev
  # Remembered passwords, against GNOME's real keyring.
  gnome-keyring libsecret-tools
  xvfb xdotool x11-xserver-utils x11-utils imagemagick dbus dbus-daemon dbus-x11 notification-daemon
  python3-gi gir1.2-atspi-2.0 at-spi2-core
  desktop-file-utils
  # Manual pages and completions are checked in man, bash, zsh and fish.
  man-db bash-completion zsh fish
  # The Debian package is built, linted and installed (tests/deb.rs).
  lintian
  # Translations: msgfmt and xgettext, the Korean locale, and glyphs for its screenshots.
  gettext locales fonts-noto-cjk
  # The kernel path: cryptsetup, and Debian's kernel booted under QEMU (tests/kernel_vm.rs).
  # vng builds a small initramfs for Debian's kernel with busybox.
  cryptsetup-bin linux-image-amd64 qemu-system-x86 busybox-static
  # Debian 12's newer kernel, with ntfs3 as the kernels of Ubuntu, Fedora and Arch have it.
  linux-image-6.12-amd64
  # The desktop's view of the drives in the USB VM (tests/usb_vm.rs): udisks' HintIgnore.
  udisks2 libblockdev-crypto2
  # What GNOME Files and Thunar see in the USB VM (tests/usb_vm/file_managers.rs): gvfs' udisks
  # volume monitor, gio, and lsof, which gvfs runs to name who keeps a volume busy.
  gvfs gvfs-daemons libglib2.0-bin lsof
)
ensure_packages "${packages[@]}"
ensure_cargo
ensure_cargo_deb
ensure_xtr
ensure_vng
# The Korean session the translation tests run in; listed in locale.gen, so a later
# locale-gen (a locales upgrade) keeps it.
if ! locale -a | grep -qix 'ko_KR.utf8'; then
  grep -qx 'ko_KR.UTF-8 UTF-8' /etc/locale.gen 2>/dev/null || echo 'ko_KR.UTF-8 UTF-8' >> /etc/locale.gen
  locale-gen
fi

# The kernel pieces the end-to-end tests use (built in on some kernels: then this is a no-op).
modprobe fuse 2>/dev/null || true
modprobe loop 2>/dev/null || true

# A guilocker installed on this machine (packaging/install.sh, or the .deb) runs a daemon; the
# tests need the machine's drives, its pidfile and its udev flag to themselves, and install
# their own package. Stop it for the run and start it again after, however the run ends.
restart_installed=()
if [[ -d /run/systemd/system ]] && systemctl -q is-active guilocker.service 2>/dev/null; then
  echo "tests/run.sh: stopping the installed guilocker.service for the tests (restarted after)"
  systemctl stop guilocker.service
  restart_installed=(systemctl start guilocker.service)
elif [[ -s /run/guilocker/guilocker.pid ]] && installed_pid=$(</run/guilocker/guilocker.pid) \
    && kill -0 "$installed_pid" 2>/dev/null; then
  installed_exe=$(readlink "/proc/$installed_pid/exe")
  echo "tests/run.sh: stopping the installed daemon ($installed_exe, pid $installed_pid) for the tests (restarted after)"
  # It puts its volumes away on SIGTERM; wait for it to exit.
  kill -TERM "$installed_pid"
  timeout 90 tail --pid="$installed_pid" -f /dev/null \
    || { echo "tests/run.sh: the installed daemon (pid $installed_pid) did not stop within 90 s" >&2; exit 1; }
  restart_installed=("$installed_exe" daemon)
fi
restart_daemon() {
  local status=$?
  if ((${#restart_installed[@]})); then
    echo "tests/run.sh: starting the installed guilocker again"
    "${restart_installed[@]}" || echo "tests/run.sh: could not restart it: ${restart_installed[*]}" >&2
  fi
  return "$status"
}
trap restart_daemon EXIT

# Style and lints first: a failure here is cheap to see.
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo build --locked --all-targets
# Unit tests, then the end-to-end tests one at a time: they share /proc/partitions and the
# loop devices of this machine.
cargo test --locked --lib --bins
cargo test --locked --test '*' -- --test-threads=1
