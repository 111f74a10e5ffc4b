//! What the tests and benchmarks of every crate share, so each is written
//! once: the checks that skip a test where a facility is absent
//! ([`require!`], failing instead in CI), stores that misbehave on purpose
//! ([`FaultyBlobs`], [`SleepingStore`]) and a builder of the busybox
//! requests most tests run ([`ShRequest`]), and a real S3 server on
//! loopback ([`s3server::S3Server`]) with a farm of builders behind nginx
//! ([`farm::Farm`]). Not published; a dev-dependency
//! only.

pub mod farm;
mod faulty;
mod process;
mod requests;
pub mod s3server;
mod skip;
mod sleeping;

pub use faulty::{Fault, FaultyBlobs};
pub use process::stop;
pub use requests::{BUSYBOX, ShRequest};
pub use skip::{Need, in_ci, lacks, missing, skip_or_fail};
pub use sleeping::SleepingStore;
