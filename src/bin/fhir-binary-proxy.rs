//! `fhir-binary-proxy`: serves FHIR Binary resources natively, as FHIR JSON or as FHIR XML, in
//! front of a FHIR server that only answers Binary JSON. See `--help` and the README.

fn main() -> std::process::ExitCode {
    tower_fhir_binary::proxy::main()
}
