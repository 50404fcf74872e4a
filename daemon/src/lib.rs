//! The primia daemon as a library: CLI commands, configuration, the libp2p
//! network, durable storage, the local control socket, the round driver and
//! the whole-consortium simulator.

pub mod cli;
pub mod config;
pub mod control;
pub mod identity;
pub mod net;
pub mod node;
pub mod sim;
pub mod store;
