//! The routes, one module per resource family. Each handler carries its
//! OpenAPI description, so the document cannot drift from the code.

pub mod admin;
pub mod cache;
pub mod event_groups;
pub mod event_log;
pub mod event_queries;
pub mod event_subscriptions;
pub mod health;
pub mod keys;
pub mod keyspaces;
pub mod pagination;
pub mod streams;
pub mod whoami;
