//! Helpers of the tests of `serve --http` (web.rs, web_browser.rs): a
//! server running a build that writes lines over three seconds, and
//! waiting on what its page says.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::get;
use super::{Serve, busybox_request};

/// Polls build `id`'s summary until `ready` says so (at most a minute).
pub fn wait_for(web: &str, id: u64, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = get(web, &format!("/api/builds/{id}"));
        if r.status == 200 {
            let v: Value = serde_json::from_str(&r.body).unwrap();
            if ready(&v) {
                return v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "build {id} never got ready: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The one running build's id (waiting for it to be listed).
pub fn running_id(web: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list: Value = serde_json::from_str(&get(web, "/api/builds").body).unwrap();
        if let Some(id) = list["running"][0]["id"].as_u64() {
            return id;
        }
        assert!(Instant::now() < deadline, "no build ever ran: {list}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a tvix DoBuild of `script` on `server`, on `rt`.
pub fn start_build(
    rt: &tokio::runtime::Runtime,
    server: &Serve,
    tmp: &Path,
    script: &str,
) -> tokio::task::JoinHandle<Result<tvix_oci_spec::proto::Build, tonic::Status>> {
    let (mut client, busybox) = rt.block_on(async {
        let busybox = server.upload_busybox(tmp).await;
        (server.builds().await, busybox)
    });
    let req = busybox_request(&busybox, &["build/x"], script);
    rt.spawn(async move { client.do_build(req).await.map(|r| r.into_inner()) })
}

/// A `serve --http` running a build of [`LINES`], seen running.
pub struct Watching {
    pub server: Serve,
    /// The page's URL.
    pub web: String,
    pub rt: tokio::runtime::Runtime,
    pub build: tokio::task::JoinHandle<Result<tvix_oci_spec::proto::Build, tonic::Status>>,
    /// The build's id on the page.
    pub id: u64,
}

pub fn watch_a_build(tmp: &Path) -> Watching {
    let (server, web) = Serve::start_watched(&tmp.join("data"), &tmp.join("bundles"), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let build = start_build(&rt, &server, tmp, LINES);
    let id = running_id(&web);
    Watching {
        server,
        web,
        rt,
        build,
        id,
    }
}

pub const LINES: &str = "for i in $(seq 1 12); do echo \"line $i <b id=injected>x</b>\"; \
    sleep 0.25; done; echo done > x";
