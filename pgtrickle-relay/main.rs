//! `pgtrickle-relay`, installed through the seed README's `cargo install --path pgtrickle-relay`.

// Same allocator as the relay-runtime binary (see its main.rs for why).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    relay_runtime::cli::main()
}
