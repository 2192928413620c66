//! The load generator behind `loadgen`: real yrs peers against Tandem and the servers people
//! use, started side by side on loopback, with every figure read from the same run.

// A load generator, not the server: its tasks need none of `Lifecycle`'s shutdown tracking.
#![allow(clippy::disallowed_methods)]

mod bulk;
pub mod disk;
pub mod peer;
pub mod report;
pub mod scenario;
pub mod target;
