# Shell functions shared by packaging/install.sh and tests/run.sh. Source it; it runs nothing.

# ensure_packages NAME...: installs the Debian packages that are not installed yet.
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "guilocker: installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

# ensure_cargo: puts rustup's cargo on PATH when sudo dropped it, or fails with advice.
ensure_cargo() {
  local env
  if ! command -v cargo >/dev/null; then
    for env in "${SUDO_USER:+$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo/env}" /root/.cargo/env; do
      if [[ -n $env && -f $env ]]; then
        # shellcheck disable=SC1090
        source "$env"
        break
      fi
    done
  fi
  command -v cargo >/dev/null || { echo "guilocker: cargo not found; install Rust with rustup" >&2; return 1; }
}

# ensure_vng: virtme-ng (PyPI), which boots a kernel in QEMU over this root filesystem.
ensure_vng() {
  command -v vng >/dev/null && return
  echo "guilocker: installing virtme-ng"
  python3 -m pip install -q --root-user-action=ignore virtme-ng
  command -v vng >/dev/null || { hash -r; command -v vng >/dev/null; }
}

# generate_docs BIN DIR: the manual pages (DIR/man) and shell completions (DIR/completions)
# that BIN generates from its own argument definitions and example configuration.
generate_docs() {
  local bin=$1 dir=$2 shell
  rm -rf "$dir/man" "$dir/completions"
  "$bin" man-pages "$dir/man"
  mkdir -p "$dir/completions"
  for shell in bash zsh fish; do
    "$bin" completions "$shell" > "$dir/completions/guilocker.$shell"
  done
}

# ensure_cargo_deb: cargo-deb (crates.io), which builds the Debian package.
ensure_cargo_deb() {
  command -v cargo-deb >/dev/null && return
  echo "guilocker: installing cargo-deb"
  cargo install --locked -q cargo-deb
}

# The programs that build translations: msgfmt (gettext) always; xtr, which reads Rust as
# xgettext reads C (Debian 12's xgettext has no Rust parser), only to extract messages.
ensure_xtr() {
  command -v xtr >/dev/null && return
  echo "guilocker: installing xtr"
  # Its gettext-rs links glibc's own libintl instead of building GNU gettext.
  GETTEXT_SYSTEM=1 cargo install --locked -q xtr
}

# Writes the translation template to $1: the messages marked with tr! in the Rust sources,
# the --help texts, and translatable="yes" in the .ui templates. Locations name files, not lines, so the template
# only changes when a message does. A subshell: its own `set -e` and cleanup, whoever calls.
extract_messages() (
  set -euo pipefail
  out=$1
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # tr!: the messages; n_(): sentences of the daemon and others, which the clients
  # translate (src/i18n.rs).
  xtr src/lib.rs -k tr -k n_ --add-location file --package-name guilocker -o "$tmp/rust.pot"
  # The ITS rules for GtkBuilder are Debian's fallback copy: xgettext warns that it is.
  LC_ALL=C.UTF-8 xgettext --from-code=UTF-8 --add-location=file --package-name=guilocker \
    -o "$tmp/ui.pot" ui/*.ui 2>"$tmp/warnings"
  grep -v 'fallback ITS rule' "$tmp/warnings" >&2 || true
  # --help: clap's texts from the doc comments, which a built guilocker prints.
  bin=${GUILOCKER_BIN:-}
  if [[ -z $bin ]]; then
    cargo build -q --locked --bin guilocker
    bin=target/debug/guilocker
  fi
  "$bin" messages > "$tmp/help.pot"
  LC_ALL=C.UTF-8 msgcat --use-first --add-location=file -o "$out" \
    "$tmp/rust.pot" "$tmp/help.pot" "$tmp/ui.pot"
)

# Compiles every po/LANG.po into $1/LANG/LC_MESSAGES/guilocker.mo (a locale directory:
# /usr/share/locale, or target/deb-assets/locale), readable by everyone whatever the umask.
compile_translations() (
  set -euo pipefail
  dest=$1
  command -v msgfmt >/dev/null || { echo "guilocker: msgfmt is missing (Debian: apt install gettext)" >&2; exit 1; }
  tmp=$(mktemp)
  trap 'rm -f "$tmp"' EXIT
  for po in po/*.po; do
    lang=$(basename "$po" .po)
    msgfmt --check -o "$tmp" "$po"
    install -D -m 0644 "$tmp" "$dest/$lang/LC_MESSAGES/guilocker.mo"
  done
)
