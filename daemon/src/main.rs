//! `primiad`: parses the command line, sets up logging and runs the command.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // SAFETY: nothing else runs yet: no thread has been started.
    unsafe { primia_model::runtime::configure_process() };
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
