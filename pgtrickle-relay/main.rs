//! `pgtrickle-relay`, installed through the seed README's `cargo install --path pgtrickle-relay`.

fn main() -> std::process::ExitCode {
    relay_runtime::cli::main()
}
