//! Shared helpers for the workspace tests (real daemons, shared data).
