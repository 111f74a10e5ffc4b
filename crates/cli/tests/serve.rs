//! `tvix-oci-build serve` driven by gRPC clients, as tvix or snix would:
//! upload the inputs through the castore services, send a `DoBuild`, read
//! the outputs back; a bad request, a failing build, and SIGTERM with a
//! build in flight.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Serve as Server, assert_nothing_left, busybox_request as request};
use tvix_oci_castore::proto::{self as castore_proto, node as proto_node};
use tvix_oci_castore::{B3Digest, Node};
use tvix_oci_spec::proto;

#[tokio::test(flavor = "multi_thread")]
async fn do_build_over_grpc_and_read_the_outputs_back() {
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    let tmp = tempfile::tempdir().unwrap();
    let bundles = tmp.path().join("bundles");
    let server = Server::start(&tmp.path().join("data"), &bundles, &[]);
    let (blobs, dirs) = server.stores().await;
    let busybox = server.upload_busybox(tmp.path()).await;

    let mut client = server.builds().await;
    let req = request(
        &busybox,
        &["build/hello", "nix/store/out"],
        "mkdir /nix/store/out; echo made with /nix/store/busybox > /nix/store/out/msg; echo hi > hello",
    );
    let build = client.do_build(req.clone()).await.unwrap().into_inner();
    assert_eq!(build.build_request.as_ref(), Some(&req));
    let build = tvix_oci_spec::Build::try_from(build).unwrap();
    assert_eq!(build.outputs_needles, vec![vec![], vec![0]]);

    let (name, hello) = &build.outputs[0];
    assert_eq!(name.as_bytes(), b"hello");
    let Node::File { digest, .. } = hello else {
        panic!("hello is {hello:?}")
    };
    assert_eq!(*digest, B3Digest::of(b"hi\n"));
    assert!(
        blobs.has(digest).await.unwrap(),
        "the output is in the store"
    );

    let (name, out) = &build.outputs[1];
    assert_eq!(name.as_bytes(), b"out");
    let Node::Directory { digest, .. } = out else {
        panic!("out is {out:?}")
    };
    let dir = dirs
        .get(digest)
        .await
        .unwrap()
        .expect("the output's directory is stored");
    let (_, msg) = dir.nodes().find(|(n, _)| n.as_bytes() == b"msg").unwrap();
    let Node::File { digest, .. } = msg else {
        panic!("msg is {msg:?}")
    };
    let mut bytes = Vec::new();
    use tokio::io::AsyncReadExt;
    blobs
        .open_read(digest)
        .await
        .unwrap()
        .expect("msg's blob is stored")
        .read_to_end(&mut bytes)
        .await
        .unwrap();
    assert_eq!(bytes, b"made with /nix/store/busybox\n");

    // snix clients call snix.build.v1 and get snix's BuildResponse: the
    // same outputs as anonymous entries (snix refuses named ones), each
    // with its needles.
    let http = server.url.replace("grpc+http://", "http://");
    let mut snix = proto::snix::build_service_client::BuildServiceClient::connect(http)
        .await
        .unwrap();
    let resp = snix.do_build(req.clone()).await.unwrap().into_inner();
    let anonymous = |n: &Node| {
        n.to_proto(&"x".try_into().unwrap()).node.map(|n| match n {
            proto_node::Node::Directory(d) => {
                proto_node::Node::Directory(castore_proto::DirectoryNode {
                    name: Default::default(),
                    ..d
                })
            }
            proto_node::Node::File(f) => proto_node::Node::File(castore_proto::FileNode {
                name: Default::default(),
                ..f
            }),
            proto_node::Node::Symlink(l) => proto_node::Node::Symlink(castore_proto::SymlinkNode {
                name: Default::default(),
                ..l
            }),
        })
    };
    let got: Vec<_> = resp
        .outputs
        .iter()
        .map(|o| o.output.clone().and_then(|n| n.node))
        .collect();
    assert_eq!(got, vec![anonymous(hello), anonymous(out)]);
    assert_eq!(resp.outputs[0].needles, Vec::<u64>::new());
    assert_eq!(resp.outputs[1].needles, vec![0]);

    // snix sends outputs in output-name order, not sorted: snix.build.v1
    // answers in that order; tvix.build.v1 still requires them sorted.
    let mut unsorted = req.clone();
    unsorted.outputs.reverse();
    let resp = snix.do_build(unsorted.clone()).await.unwrap().into_inner();
    let got: Vec<_> = resp
        .outputs
        .iter()
        .map(|o| o.output.clone().and_then(|n| n.node))
        .collect();
    assert_eq!(got, vec![anonymous(out), anonymous(hello)]);
    let needles: Vec<_> = resp.outputs.iter().map(|o| o.needles.clone()).collect();
    assert_eq!(needles, vec![vec![0], vec![]]);
    let err = client.do_build(unsorted).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("is not sorted"), "{}", err.message());

    // An invalid request: INVALID_ARGUMENT naming the field.
    let mut bad = req.clone();
    bad.working_dir = "../escape".into();
    let err = client.do_build(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("working_dir"), "{}", err.message());

    // A failing build: ABORTED with its exit code and log tail.
    let fail = request(&busybox, &["build/x"], "echo broken >&2; exit 7");
    let err = client.do_build(fail).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Aborted, "{err:?}");
    assert!(err.message().contains("exit code 7"), "{}", err.message());
    assert!(err.message().contains("broken"), "{}", err.message());

    assert_nothing_left(&bundles);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_a_build_in_flight_leaves_nothing_behind() {
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    let tmp = tempfile::tempdir().unwrap();
    let bundles = tmp.path().join("bundles");
    let mut server = Server::start(&tmp.path().join("data"), &bundles, &[]);
    let busybox = server.upload_busybox(tmp.path()).await;
    let mut client = server.builds().await;
    let req = request(
        &busybox,
        &["build/x"],
        "/nix/store/busybox/bin/busybox sleep 60",
    );
    let call = tokio::spawn(async move { client.do_build(req).await });

    // Wait for the container to be running.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let list = std::process::Command::new("runc")
            .args(["list", "--format", "json"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&list.stdout).contains(bundles.to_str().unwrap()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the build never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // SAFETY: the child's pid.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let status = server.child.wait().unwrap();
    assert!(status.success(), "serve ends cleanly on SIGTERM: {status}");
    let res = call.await.unwrap();
    assert!(res.is_err(), "the call of a stopped server fails");
    assert_nothing_left(&bundles);
}

/// A build id pool holding a host account (here root's uid 0) refuses to
/// start the server, naming the account, rather than fail every build.
#[test]
fn a_build_id_pool_holding_a_host_account_refuses_to_start() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: the build id pool is used as root only");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = common::bin(&tmp.path().join("data"))
        .args(["serve", "--listen", "127.0.0.1:0", "--id-pool", "0:65536"])
        .arg("--bundle-root")
        .arg(tmp.path().join("bundles"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("uid 0 of user root in /etc/passwd is inside the build id pool 0..65536"),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "it listened"
    );
}

/// Each finished build is one line of the server's log at its default
/// level: the build id, the peer, the wall time, the outcome (the exit
/// code of a failed build) and the status answered.
#[tokio::test(flavor = "multi_thread")]
async fn each_finished_build_logs_one_line_with_its_outcome() {
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    let tmp = tempfile::tempdir().unwrap();
    let bundles = tmp.path().join("bundles");
    let log_path = tmp.path().join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (child, url) =
        common::spawn_serve_with_log(&tmp.path().join("data"), &bundles, &[], log.into());
    let server = Server { child, url };
    let busybox = server.upload_busybox(tmp.path()).await;
    let mut client = server.builds().await;
    let ok = request(&busybox, &["build/x"], "echo hi > x");
    client.do_build(ok).await.unwrap();
    let fail = request(&busybox, &["build/x"], "exit 7");
    client.do_build(fail).await.unwrap_err();
    drop(server);

    let text = std::fs::read_to_string(&log_path).unwrap();
    let finished: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("build finished"))
        .collect();
    assert_eq!(finished.len(), 2, "{text}");
    for (line, outcome, status) in [
        (finished[0], "build finished: built its output", "status=Ok"),
        (
            finished[1],
            "build finished: the build failed with exit code 7",
            "status=Aborted",
        ),
    ] {
        assert!(line.contains(" INFO "), "{line}");
        assert!(line.contains(outcome), "{line}");
        assert!(line.contains(status), "{line}");
        assert!(line.contains("build=tob-"), "{line}");
        assert!(line.contains("peer=127.0.0.1:"), "{line}");
        assert!(line.contains("wall="), "{line}");
    }
    assert!(!text.contains("Not Implemented"), "{text}");
    assert_nothing_left(&bundles);
}

/// `--queue 0` with every job busy: a further build is refused at once
/// with RESOURCE_EXHAUSTED (for a load balancer to send it elsewhere),
/// and taken again once a job is free.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_answers_resource_exhausted_at_once() {
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    let tmp = tempfile::tempdir().unwrap();
    let bundles = tmp.path().join("bundles");
    let extra = ["--jobs", "1", "--queue", "0"];
    let (child, url) = common::spawn_serve(&tmp.path().join("data"), &bundles, &extra);
    let server = Server { child, url };
    let busybox = server.upload_busybox(tmp.path()).await;
    let slow = request(&busybox, &["build/x"], "sleep 4; echo slow > x");
    let mut first = server.builds().await;
    let running = tokio::spawn(async move { first.do_build(slow).await });
    // Until the first build holds the one job: its bundle is made then.
    let holding = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_dir(&bundles).map_or(true, |mut d| d.next().is_none()) {
        assert!(
            std::time::Instant::now() < holding,
            "the first build never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let quick = request(&busybox, &["build/x"], "echo quick > x");
    let t = std::time::Instant::now();
    let err = server
        .builds()
        .await
        .do_build(quick.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("this builder is busy"),
        "{}",
        err.message()
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(1),
        "refused at once"
    );
    running.await.unwrap().unwrap();
    server.builds().await.do_build(quick).await.unwrap();
    assert_nothing_left(&bundles);
}
