//! # keel-api
//!
//! The Keel server's HTTP API as types: the JSON bodies of requests and answers and the query
//! parameters, with their OpenAPI schemas. The server (`keel-server`'s `http` module) serves
//! them; the CLI, the simulator, xtask and the tests read and send them, so a field renamed on
//! one side fails to compile on the other. See `GET /v1/openapi.json` for the routes.
//!
//! With the feature `client`, [`Client`] is a typed blocking client of the API (ureq with rustls;
//! one method per route, errors as [`ApiError`] with the HTTP status and the API's `error.code`);
//! the CLI, the simulator's idle bench and the tests talk to the server through it;
//! [`Client::debug_socket`] opens the remote debugging relay's websocket ([`DebugSocket`],
//! tungstenite over TCP or rustls). The server leaves the feature off.

mod bundles;
#[cfg(feature = "client")]
mod client;
mod crashes;
mod deployments;
mod devices;
mod errors;
mod logs;
mod server;
mod settings;
mod signer_keys;
mod tokens;

pub use bundles::*;
#[cfg(feature = "client")]
pub use client::{ApiError, Client, DebugSocket, LogStream, MAX_DEBUG_FRAME, MAX_EVENT_BYTES};
pub use crashes::*;
pub use deployments::*;
pub use devices::*;
pub use errors::*;
pub use logs::*;
pub use server::*;
pub use settings::*;
pub use signer_keys::*;
pub use tokens::*;
