//! The generated protobuf types and gRPC stubs of `tvix.build.v1`, the
//! `snix.build.v1` service (same request, snix's `BuildResponse`), and
//! our own `tvix_oci_build.v1` (the same request answered with a stream of
//! events, [`events`]). Wire
//! types: nothing in them is validated; convert them into
//! [`crate::BuildRequest`] at the boundary.

#[allow(missing_docs, missing_debug_implementations, clippy::all)]
mod generated {
    pub mod tvix {
        pub mod build {
            pub mod v1 {
                tonic::include_proto!("tvix.build.v1");
            }
        }
    }
    pub mod snix {
        pub mod build {
            pub mod v1 {
                tonic::include_proto!("snix.build.v1");
            }
        }
    }
    pub mod tvix_oci_build {
        pub mod v1 {
            tonic::include_proto!("tvix_oci_build.v1");
        }
    }
}

pub use generated::tvix::build::v1::*;

/// The `snix.build.v1` service and its `BuildResponse`.
pub mod snix {
    pub use super::generated::snix::build::v1::*;
}

/// `tvix_oci_build.v1`: `BuildService.Build`, a build answered with a
/// stream of [`BuildEvent`](events::BuildEvent)s (see its proto for the
/// order and meaning of the events).
pub mod events {
    pub use super::generated::tvix_oci_build::v1::*;
}

impl snix::BuildResponse {
    /// snix's form of a result, as snix's client reads it: one output per
    /// requested output, each an *anonymous* entry (empty name: snix
    /// refuses a named one, "output entry N invalid") next to its needles
    /// (indices into the request's `refscan_needles`, unchanged).
    ///
    /// `order[j]` is the position in the client's request of `b`'s output
    /// `j` (`b` answers a copy of the request with its outputs sorted); the
    /// answer is in the client's order. Where `order` has no entry for an
    /// output, the output keeps its place.
    pub fn from_build(b: Build, order: &[usize]) -> Self {
        let mut needles = b.outputs_needles.into_iter();
        let mut outputs: Vec<(usize, snix::build_response::Output)> = b
            .outputs
            .into_iter()
            .enumerate()
            .map(|(j, output)| {
                let at = order.get(j).copied().unwrap_or(j);
                let output = snix::build_response::Output {
                    output: Some(anonymous(output)),
                    needles: needles.next().map(|n| n.needles).unwrap_or_default(),
                };
                (at, output)
            })
            .collect();
        outputs.sort_by_key(|(at, _)| *at);
        snix::BuildResponse {
            outputs: outputs.into_iter().map(|(_, o)| o).collect(),
        }
    }
}

impl From<Build> for snix::BuildResponse {
    /// [`snix::BuildResponse::from_build`] for a request whose outputs were
    /// already sorted.
    fn from(b: Build) -> Self {
        snix::BuildResponse::from_build(b, &[])
    }
}

/// `node` with its name emptied: an anonymous castore entry.
fn anonymous(mut node: tvix_oci_castore::proto::Node) -> tvix_oci_castore::proto::Node {
    use tvix_oci_castore::proto::node::Node as N;
    match &mut node.node {
        Some(N::Directory(d)) => d.name = Default::default(),
        Some(N::File(f)) => f.name = Default::default(),
        Some(N::Symlink(s)) => s.name = Default::default(),
        None => {}
    }
    node
}

#[cfg(test)]
mod tests {
    use super::*;
    use tvix_oci_castore::proto::{FileNode, node::Node as N};

    fn file(name: &str, size: u64) -> tvix_oci_castore::proto::Node {
        tvix_oci_castore::proto::Node {
            node: Some(N::File(FileNode {
                name: name.as_bytes().to_vec().into(),
                digest: vec![7; 32].into(),
                size,
                executable: false,
            })),
        }
    }

    fn build(sizes: &[u64]) -> Build {
        Build {
            build_request: None,
            outputs: sizes.iter().map(|&s| file(&format!("o{s}"), s)).collect(),
            outputs_needles: sizes
                .iter()
                .map(|&s| build::OutputNeedles { needles: vec![s] })
                .collect(),
        }
    }

    /// (size, needles, name) of each output of a snix answer.
    fn seen(r: &snix::BuildResponse) -> Vec<(u64, Vec<u64>, Vec<u8>)> {
        r.outputs
            .iter()
            .map(|o| match o.output.as_ref().and_then(|n| n.node.as_ref()) {
                Some(N::File(f)) => (f.size, o.needles.clone(), f.name.to_vec()),
                other => panic!("not a file: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn snix_answers_are_anonymous_and_in_the_requests_order() {
        // Sorted outputs 0, 1, 2 stood at 2, 0, 1 in the request.
        let r = snix::BuildResponse::from_build(build(&[10, 11, 12]), &[2, 0, 1]);
        assert_eq!(
            seen(&r),
            vec![
                (11, vec![11], vec![]),
                (12, vec![12], vec![]),
                (10, vec![10], vec![]),
            ]
        );
        // Already sorted: the same order, still anonymous.
        let r = snix::BuildResponse::from(build(&[10, 11]));
        assert_eq!(
            seen(&r),
            vec![(10, vec![10], vec![]), (11, vec![11], vec![])]
        );
    }
}
