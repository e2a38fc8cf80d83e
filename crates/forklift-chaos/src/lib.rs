//! The chaos suite: proves Forklift's guarantees (SPEC §4) by running real worker
//! processes against a private PostgreSQL while faults hit them on a seeded schedule,
//! then checking a ledger of every execution against what each enqueue was answered.
//!
//! - [`cluster`]: the private PostgreSQL (restarted by the faults).
//! - [`proxy`]: a TCP proxy per worker that can blackhole its database link.
//! - [`ledger`]: the `ledger` job type and the audit tables.
//! - [`node`]: the worker and API processes.
//! - [`plan`]: settings and the fault schedule; [`fleet`]: the worker processes;
//!   [`load`]: the load generator; [`run`]: one run; [`check`]: the checker;
//!   [`report`]: its figures and goals.

pub mod check;
pub mod cluster;
pub mod fleet;
pub mod ledger;
pub mod load;
pub mod node;
pub mod plan;
pub mod proxy;
pub mod report;
pub mod run;

pub use plan::{Config, Timing};
pub use report::Report;
pub use run::run;
