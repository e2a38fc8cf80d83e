//! The Forklift server: the Jobs API router (mountable in another axum app) and the
//! pieces of the `forklift` command.

pub mod auth;
pub mod cli;
pub mod commands;
pub mod http;
pub mod server;

pub use http::{ApiConfig, AppState, openapi, router};
