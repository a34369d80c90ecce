//! `tickets`: the team's own command line, serving the tickets domain (`serve`, `history`,
//! `state`, `verify`, ... as `chronicle_cli` has them).

fn main() -> std::process::ExitCode {
    chronicle_cli::main(tickets::domain())
}
