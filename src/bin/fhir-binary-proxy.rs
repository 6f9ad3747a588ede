//! `fhir-binary-proxy`: serves FHIR Binary resources natively, as FHIR JSON or as FHIR XML, in
//! front of a FHIR server that only answers Binary JSON. See `--help` and the README.

/// jemalloc with its background thread, rather than the system's allocator: glibc's malloc
/// keeps most of what slow clients held after they have gone, jemalloc returns it within
/// seconds (measured in docs/performance.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    tower_fhir_binary::proxy::main()
}
