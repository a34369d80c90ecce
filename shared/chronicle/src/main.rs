//! `chronicle`, serving the sample domains (see `chronicle_cli` for the commands).

fn main() -> std::process::ExitCode {
    chronicle_cli::main(chronicle_samples::domain())
}
