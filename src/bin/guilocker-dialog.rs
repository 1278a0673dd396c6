//! The GTK unlock dialog, run as `guilocker dialog` by the login agent, and the keyring
//! commands behind `guilocker remembered` and `guilocker forget`. A binary of its own so that
//! GTK and GLib are never loaded into the root daemon, the agent or the CLI.

/// Freed heap blocks are wiped, as in `guilocker` (the password crosses serde here too).
#[global_allocator]
static ALLOC: zeroizing_alloc::ZeroAlloc<std::alloc::System> =
    zeroizing_alloc::ZeroAlloc(std::alloc::System);

fn main() {
    std::process::exit(guilocker::dialog::main());
}
