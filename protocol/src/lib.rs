//! Wire messages, roster and the sans-IO secure-aggregation round of primia.
#![forbid(unsafe_code)]
