//! `pgtrickle-relay`: the standalone relay binary. Everything lives in the library.

fn main() -> std::process::ExitCode {
    relay_runtime::cli::main()
}
