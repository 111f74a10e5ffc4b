//! One build as a data flow of four stages, each a value the next one
//! consumes, so what a build holds at each point is in a type and the
//! order things are torn down is the order of fields:
//!
//! 1. [`prepare`](crate::Executor): host checks, the request's read-only
//!    paths, the runtime, what the build runs as (rootless ids or a slot of
//!    the build id pool, a cgroup) and its [`SpecOptions`](tvix_oci_spec::SpecOptions),
//!    derived once → [`Prepared`];
//! 2. [`Sandbox::create`]: the bundle, its skeleton, the inputs mounted
//!    through FUSE, the overlay → [`Sandbox`];
//! 3. [`Sandbox::run`]: the container, then the mounts torn down and the
//!    run judged ([`decide`]) → [`Ran`];
//! 4. [`collect`]: the inputs checked untouched, the outputs ingested →
//!    the `Build` and its [`OutputInfo`](crate::OutputInfo)s.
//!
//! The decisions between them — whose fault a failure is, a kill at the
//! memory limit, a store that failed under the build, where an output is —
//! are pure functions in [`decide`], tested without root.

mod collect;
pub(crate) mod decide;
mod prepare;
mod run;
mod sandbox;

pub(crate) use collect::{Collected, collect, limits_from};
pub(crate) use prepare::Prepared;
pub(crate) use run::{OnDrop, Ran};
pub(crate) use sandbox::{Sandbox, plan_view};

#[cfg(test)]
mod host_tests;
