//! The ecs provider: ECS services.
//!
//! Its settings ([`config`]) are compiled always; the provider itself only with the `ecs`
//! feature, one module a role: `provider` (the provider and the order of its calls),
//! `naming` (names, tags, secret scope), `render` (what a spec becomes in requests),
//! `errors` (the error table), `observer` (the shared DescribeServices batcher) and
//! `rollout` (what a described service says about an execution).

pub mod config;
#[cfg(feature = "ecs-default-vpc")]
mod default_vpc;
#[cfg(feature = "ecs")]
mod errors;
#[cfg(all(test, feature = "ecs"))]
mod fixtures;
#[cfg(feature = "ecs")]
mod naming;
#[cfg(feature = "ecs")]
mod observer;
#[cfg(feature = "ecs")]
mod provider;
#[cfg(feature = "ecs")]
mod render;
#[cfg(feature = "ecs")]
mod rollout;

pub use config::*;
#[cfg(feature = "ecs")]
pub use errors::{classify, classify_code, redact, stopped_task_error};
#[cfg(feature = "ecs")]
pub use naming::{client_token, default_secret_arn_prefixes, is_secret_arn, service_name};
#[cfg(feature = "ecs")]
pub use observer::Observer;
#[cfg(feature = "ecs")]
pub use provider::EcsProvider;

/// The provider's name, in errors and logs.
#[cfg(feature = "ecs")]
const PROVIDER: &str = "ecs";
