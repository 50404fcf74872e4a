//! The primia daemon as a library: CLI commands, and later the network, storage and driver.

pub mod cli;
