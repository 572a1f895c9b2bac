//! The `trunkgate` binary.

/// jemalloc, not glibc's malloc (decision 0007): under load the SIP core
/// allocates and frees about 340 blocks per call, and glibc spent a fifth
/// of the core's CPU on them (fastbins consolidated whenever a message
/// buffer of 1 KiB or more was asked for, bins walked in a heap fragmented
/// by 32 s of held transactions); jemalloc's size classes and per-thread
/// caches make the same work about 20 % cheaper per call.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    trunkgate::cli::main()
}
