//! `primiad`: parses the command line, sets up logging and runs the command.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = primiad::cli::Cli::parse();
    primiad::cli::init_tracing(cli.verbose);
    match primiad::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
