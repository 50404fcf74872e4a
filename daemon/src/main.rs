//! `primiad`: parses the command line, sets up logging and runs the command.

use clap::Parser;

/// How long candle's idle worker threads spin before they sleep. Its
/// default (25,000 spins) suits a machine with cores to spare; a daemon
/// shares its cores with networking, and a simulation runs several
/// hospitals' training at once, where spinning workers take the CPU from
/// the threads that have work (about a quarter of the wall time of
/// `primiad simulate` on two cores). Set the variable to override.
const CANDLE_SPIN_LIMIT: &str = "200";

fn main() -> std::process::ExitCode {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // SAFETY: nothing else runs yet: no thread has been started, so no
        // one can read the environment concurrently.
        unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", CANDLE_SPIN_LIMIT) };
    }
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
