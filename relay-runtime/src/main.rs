//! `pgtrickle-relay`: the standalone relay binary. Everything lives in the library.

// The relay allocates and frees many small buffers per message, often on different threads
// (the broker clients' tasks free what the pipeline allocated); glibc's allocator spent about a
// third of the relay's CPU on that in profiles of scripts/bench. mimalloc is built with its
// `override` feature, so the C libraries linked in (librdkafka: headers, message copies) use it
// too instead of glibc's malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    relay_runtime::cli::main()
}
