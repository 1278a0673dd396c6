//! The `guilocker` binary: parse arguments, hand over to the library.

/// Every heap block is wiped when freed: copies of a secret that we never see (serde_json's
/// unescape buffer, serde's buffered fields, a Vec's old storage after it grows) leave nothing
/// behind. Costs one memset per free.
#[global_allocator]
static ALLOC: zeroizing_alloc::ZeroAlloc<std::alloc::System> =
    zeroizing_alloc::ZeroAlloc(std::alloc::System);

fn main() -> std::process::ExitCode {
    guilocker::cli::main()
}
