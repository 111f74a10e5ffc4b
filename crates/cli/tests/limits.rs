//! Large requests against the real binary: `serve` keeps answering castore
//! calls while it validates two requests of 300,000 outputs, a request of
//! a thousand problems is answered INVALID_ARGUMENT (not a status too large
//! for its header), and `spec` of 100,000 outputs is quick when the limit
//! is raised and refused naming the flag when it is not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Serve, bin};
use prost::Message;
use tvix_oci_castore::{B3Digest, open_blob_service};
use tvix_oci_spec::proto::{self, build_request as br};

/// `serve` with its store and bundles under `tmp`, and `args`.
fn serve(tmp: &std::path::Path, args: &[&str]) -> Serve {
    Serve::start(&tmp.join("data"), &tmp.join("bundles"), args)
}

/// A request of `outputs` outputs `o/000000`.. (plus any `extra`),
/// valid but for what `extra` adds.
fn request(outputs: usize, extra: &[&str]) -> proto::BuildRequest {
    let mut out: Vec<String> = (0..outputs).map(|i| format!("o/{i:06}")).collect();
    out.extend(extra.iter().map(|s| s.to_string()));
    out.sort();
    proto::BuildRequest {
        command_args: vec!["/bin/true".into()],
        working_dir: "o".into(),
        scratch_paths: vec!["nix/store".into(), "o".into()],
        inputs_dir: "nix/store".into(),
        outputs: out,
        constraints: Some(br::BuildConstraints {
            system: "x86_64-linux".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_answers_stat_while_validating_two_huge_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(tmp.path(), &["--max-outputs", "300001"]);
    let blobs = open_blob_service(&server.url).await.unwrap();
    let digest = B3Digest::of(b"not stored");
    assert!(!blobs.has(&digest).await.unwrap());

    // One overlap hidden in the middle: found only by validating it all.
    let req = request(300_000, &["o/150000/x"]);
    println!("request of {} bytes", req.encoded_len());
    let mut calls = Vec::new();
    for _ in 0..2 {
        let mut client = server.builds().await;
        let req = req.clone();
        calls.push(tokio::spawn(async move { client.do_build(req).await }));
    }
    // Castore calls, one after the other, until both builds are answered:
    // each must be answered promptly, the requests being decoded or
    // validated meanwhile.
    let start = Instant::now();
    let (mut worst, mut stats) = (Duration::ZERO, 0);
    while calls.iter().any(|c| !c.is_finished()) {
        let t = Instant::now();
        let stat = tokio::time::timeout(Duration::from_secs(10), blobs.has(&digest)).await;
        let latency = t.elapsed();
        assert!(
            matches!(stat, Ok(Ok(false))),
            "Stat under load: {stat:?} after {latency:?}"
        );
        if latency > Duration::from_millis(100) {
            println!(
                "a Stat took {latency:?}, {:?} after the DoBuild calls",
                t - start
            );
        }
        worst = worst.max(latency);
        stats += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "{stats} Stat calls in the {:?} the two DoBuild calls took, the slowest answered in {worst:?}",
        start.elapsed()
    );
    assert!(stats > 0, "no Stat while the DoBuild calls were in flight");
    assert!(worst < Duration::from_secs(2), "a Stat took {worst:?}");

    for c in calls {
        let err = c.await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message()
                .contains("outputs[150001] \"o/150000/x\" is inside output \"o/150000\""),
            "{}",
            err.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_problems_answer_invalid_argument_with_the_count() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(tmp.path(), &[]);
    let mut req = request(0, &[]);
    req.outputs = (0..1000).map(|i| format!("etc/o{i:04}")).collect();
    let err = server.builds().await.do_build(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let msg = err.message();
    println!("{} bytes: {msg}", msg.len());
    assert!(msg.contains("1000 problems"), "{msg}");
    assert!(
        msg.contains("outputs[0] \"etc/o0000\" is not below a scratch path"),
        "{msg}"
    );
    assert!(msg.contains("… and 980 more problems"), "{msg}");
    assert!(msg.len() < 8 << 10, "{} bytes", msg.len());

    // Over a limit: refused on the count, naming the flag.
    let req = request(5000, &[]);
    let err = server.builds().await.do_build(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(
            "outputs \"5000 entries\" is more than the limit of 4096 (raise it with --max-outputs)"
        ),
        "{}",
        err.message()
    );
}

#[test]
fn spec_of_a_hundred_thousand_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("req.pb");
    std::fs::write(&file, request(100_000, &[]).encode_to_vec()).unwrap();

    let t = Instant::now();
    let out = bin(&tmp.path().join("data"))
        .args(["spec", "--max-outputs", "100000"])
        .arg(&file)
        .output()
        .unwrap();
    println!("spec of 100,000 outputs: {:?}", t.elapsed());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(config["mounts"].is_array(), "{config}");

    let out = bin(&tmp.path().join("data"))
        .arg("spec")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("outputs \"100000 entries\" is more than the limit of 4096 (raise it with --max-outputs)"),
        "{err}"
    );
}
