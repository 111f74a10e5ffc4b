//! `serve --http` in a real headless browser (Debian's chromium): the
//! page, loaded while a build runs, shows the build and its log lines —
//! those written before it loaded and after — in order, as text (a line
//! of markup stays text), then how the build ended.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::skip_or_fail;
use common::watch::{Watching, wait_for, watch_a_build};

#[test]
fn a_browser_shows_a_running_build_and_its_log_lines() {
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    if which("chromium").is_none() {
        return skip_or_fail("chromium is absent (apt-get install chromium)");
    }
    let tmp = tempfile::tempdir().unwrap();
    // The server lives to the end of the test.
    let Watching {
        server: _server,
        web,
        rt,
        build,
        id,
    } = watch_a_build(tmp.path());
    // Loaded while the build runs, its first lines written, not its last.
    let early = wait_for(&web, id, |b| b["log_lines"].as_u64() >= Some(2));
    assert!(early["outcome"].is_null(), "{early}");

    let dom = chromium_dom(&format!("{web}/"), tmp.path());
    rt.block_on(build).unwrap().unwrap();
    // The page picked the running build, showed it in the list, and its
    // log: the lines written before it loaded and after, in order, as
    // text, then how it ended.
    assert!(dom.contains(&format!("<tr data-build=\"{id}\"")), "{dom}");
    assert!(
        dom.contains(&format!("Log <span id=\"watching\">of build {id}</span>")),
        "{dom}"
    );
    let mut at = 0;
    for i in 1..=12 {
        let line =
            format!("<div class=\"line stderr\">line {i} &lt;b id=injected&gt;x&lt;/b&gt;</div>");
        at += dom[at..]
            .find(&line)
            .unwrap_or_else(|| panic!("no {line} after {at}: {dom}"));
    }
    assert!(
        !dom.contains("<b id=\"injected\">"),
        "markup of the log was run: {dom}"
    );
    assert!(dom[at..].contains("— built its output"), "{dom}");
}

/// The DOM of `url` once chromium rendered it and its scripts ran. The
/// virtual time budget does not run out while a fetch is pending, so the
/// page's event stream is read to its end (the build's), then the page
/// gets 10 s of (virtual) time more. As root, chromium runs only without
/// its sandbox (`--no-sandbox`): it is loading our own page on loopback.
fn chromium_dom(url: &str, tmp: &Path) -> String {
    let profile = tmp.join("chromium-profile");
    // Its crash reports' dir and caches too under `tmp`, not in $HOME.
    let mut child = std::process::Command::new("chromium")
        .env("XDG_CONFIG_HOME", tmp)
        .env("XDG_CACHE_HOME", tmp)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=10000", "--dump-dom", url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut dom = String::new();
        std::io::Read::read_to_string(&mut out, &mut dom).map(|_| dom)
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish rendering {url} in 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap().unwrap()
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}
