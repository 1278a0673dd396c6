//! The GTK unlock dialog, run as `guilocker dialog` by the login agent. A binary of its own so
//! that GTK is never loaded into the root daemon or the agent.

fn main() {
    std::process::exit(guilocker::dialog::run());
}
