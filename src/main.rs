//! The `trunkgate` binary.

fn main() -> std::process::ExitCode {
    trunkgate::cli::main()
}
