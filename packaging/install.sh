#!/usr/bin/env bash
# Installs guilocker on Debian 12: the packages it needs, a release build, the binaries, the
# config, the systemd unit (or a detached daemon where systemd is not running), and the
# desktop files. Run from a checkout: sudo packaging/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source packaging/lib.sh

[[ $(id -u) == 0 ]] || { echo "install.sh: run as root: sudo packaging/install.sh" >&2; exit 1; }

prefix=${PREFIX:-/usr/local}
# cryptsetup: the kernel path (dm-crypt) where the kernel has device-mapper.
# libsecret: the dialog remembers passwords in the keyring (GNOME Keyring, KWallet).
runtime=(dislocker ntfs-3g exfat-fuse fusefat util-linux mount cryptsetup-bin libsecret-1-0)
# gettext: msgfmt compiles the translations.
build=(pkg-config libgtk-4-dev libadwaita-1-dev libsecret-1-dev gettext)
ensure_packages "${runtime[@]}" "${build[@]}"
ensure_cargo
cargo build --release --locked

install -D -m 0755 target/release/guilocker "$prefix/bin/guilocker"
# umount(8) runs /sbin/umount.guilocker when a person unmounts a volume guilocker mounted (a
# file manager's unmount button): it asks the daemon to put the volume away.
ln -sfn "$prefix/bin/guilocker" /sbin/umount.guilocker
# Manual pages and completions, generated from the binary's own definitions.
generate_docs target/release/guilocker target/docs
for page in target/docs/man/*.[158]; do
  install -D -m 0644 "$page" "$prefix/share/man/man${page##*.}/${page##*/}"
done
install -D -m 0644 target/docs/completions/guilocker.bash "$prefix/share/bash-completion/completions/guilocker"
install -D -m 0644 target/docs/completions/guilocker.zsh "$prefix/share/zsh/site-functions/_guilocker"
install -D -m 0644 target/docs/completions/guilocker.fish "$prefix/share/fish/vendor_completions.d/guilocker.fish"
# Translations (po/*.po), where the binaries look for them: share/locale beside bin/.
compile_translations "$prefix/share/locale"
# The GTK dialog lives apart, so the daemon and the agent never load GTK.
install -D -m 0755 target/release/guilocker-dialog "$prefix/libexec/guilocker/guilocker-dialog"
if [[ ! -e /etc/guilocker/config.toml ]]; then
  install -D -m 0644 packaging/config/config.toml /etc/guilocker/config.toml
fi
getent group plugdev >/dev/null || groupadd --system plugdev
[[ -n ${SUDO_USER:-} && $SUDO_USER != root ]] && usermod -aG plugdev "$SUDO_USER" || true

# Desktop integration: the agent starts at every login; the dialog's entry and icon.
install -D -m 0644 packaging/autostart/guilocker-agent.desktop /etc/xdg/autostart/guilocker-agent.desktop
install -D -m 0644 packaging/org.guilocker.Dialog.desktop \
  "$prefix/share/applications/org.guilocker.Dialog.desktop"
# The applications menu's "BitLocker Drives": opens a disk inside the computer on demand.
install -D -m 0644 packaging/org.guilocker.Open.desktop \
  "$prefix/share/applications/org.guilocker.Open.desktop"
install -D -m 0644 assets/guilocker.svg "$prefix/share/icons/hicolor/scalable/apps/guilocker.svg"
if [[ -f $prefix/share/icons/hicolor/index.theme ]] && command -v gtk-update-icon-cache >/dev/null; then
  gtk-update-icon-cache -q "$prefix/share/icons/hicolor"
fi

# udisks (GNOME, KDE) leaves our locked drives alone and shows what is unlocked on dm-crypt;
# the file manager may then put it away for its owner (polkit).
install -D -m 0644 packaging/udev/75-guilocker.rules /etc/udev/rules.d/75-guilocker.rules
if [[ -d /etc/polkit-1 ]]; then
  mkdir -p /etc/polkit-1/rules.d
  sed "s|/usr/bin/guilocker|$prefix/bin/guilocker|" packaging/polkit/50-guilocker.rules \
    > /etc/polkit-1/rules.d/50-guilocker.rules
fi
if command -v udevadm >/dev/null && [[ -S /run/udev/control ]]; then
  udevadm control --reload
fi

if [[ -d /run/systemd/system ]]; then
  sed "s|/usr/local/bin/guilocker|$prefix/bin/guilocker|" packaging/systemd/guilocker.service \
    > /etc/systemd/system/guilocker.service
  systemctl daemon-reload
  systemctl enable guilocker.service
  systemctl restart guilocker.service
  echo "guilocker: installed; the daemon runs under systemd (systemctl status guilocker)"
else
  # Replace a running daemon: it puts its volumes away on SIGTERM; wait for it to exit.
  pidfile=/run/guilocker/guilocker.pid
  if [[ -s $pidfile ]] && pid=$(<"$pidfile") && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    timeout 90 tail --pid="$pid" -f /dev/null
  fi
  "$prefix/bin/guilocker" daemon
  echo "guilocker: installed; the daemon runs detached (pid $(cat /run/guilocker/guilocker.pid))"
fi
