//! The input closure of `tvix-oci-build build DRV`, from the local Nix
//! store: 1,000 store paths (a mix of sizes, added by real Nix) as the
//! input sources of one derivation. Side by side in one run:
//!
//! - Nix's own serialisation of the same paths: `nix-store --dump` of each
//!   path piped into `sha256sum` (one process pair per path, as a script
//!   would), and one `nix-store --export` of all of them into `sha256sum`;
//! - our first import (`build --dry-run` on a fresh data dir: `nix-store
//!   --query`, every path imported into the embedded store, the map of
//!   store paths written), as throughput over the closure's NAR bytes;
//! - our second `build --dry-run` (the map hit), minus a `build --dry-run`
//!   of a derivation without inputs on the same data dir: what the
//!   closure itself costs once imported.
//!
//! Page cache dropped before each side of the first import (root; else
//! warm). Skips, saying why, where Nix is absent or unusable.
//!
//! Run: `cargo bench -p tvix-oci-benches --bench closure` (`QUICK=1`: 100
//! small paths, one round).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tvix_oci_benches::remote::cli_binary;
use tvix_oci_benches::{Rng, bench_tempdir, mib_per_s, sync_and_drop_caches, time};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Bars of issue 14: the map hit, and first import against `--dump`.
const HIT_BAR: Duration = Duration::from_millis(50);
const DUMP_BAR: f64 = 0.7;

fn main() -> Res<()> {
    if let Some(why) = nix_missing() {
        println!("SKIPPED: {why}");
        return Ok(());
    }
    let quick = std::env::var_os("QUICK").is_some();
    let (paths, rounds, warm_runs) = if quick { (100, 1, 3) } else { (1000, 3, 7) };
    let tmp = bench_tempdir()?;
    let conf = nix_conf(tmp.path())?;
    let (files, bytes) = generate(&tmp.path().join("src"), paths, quick)?;
    let (full, empty) = instantiate(tmp.path(), &conf, paths)?;
    let closure = lines(nix(
        &conf,
        &["nix-store", "--query", "--references", &full],
    )?);
    if closure.len() != paths {
        return Err(format!("{full} has {} input paths, not {paths}", closure.len()).into());
    }
    let nar_bytes: u64 = sizes(&conf, &closure)?;
    println!(
        "closure: {paths} store paths, {files} files, {:.1} MiB of file data, {:.1} MiB of NAR",
        bytes as f64 / 1048576.0,
        nar_bytes as f64 / 1048576.0
    );
    let bin = cli_binary()?;

    let mut dump = Vec::new();
    let mut export = Vec::new();
    let mut first = Vec::new();
    let mut data = tmp.path().join("data-0");
    for round in 0..rounds {
        sync_and_drop_caches();
        let (r, d) = time(|| dump_each(&conf, &closure));
        r?;
        dump.push(d);
        sync_and_drop_caches();
        let (r, d) = time(|| export_all(&conf, &closure));
        r?;
        export.push(d);
        let _ = std::fs::remove_dir_all(&data);
        data = tmp.path().join(format!("data-{round}"));
        sync_and_drop_caches();
        let (r, d) = time(|| dry_run(&bin, &data, &full));
        r?;
        first.push(d);
    }
    let mapped = count_mapped(&data)?;
    if mapped != paths {
        return Err(format!("the first run mapped {mapped} store paths, not {paths}").into());
    }
    let mut second = Vec::new();
    let mut none = Vec::new();
    for _ in 0..warm_runs {
        // Interleaved, so that both see the same machine.
        let (r, d) = time(|| dry_run(&bin, &data, &full));
        r?;
        second.push(d);
        let (r, d) = time(|| dry_run(&bin, &data, &empty));
        r?;
        none.push(d);
    }
    report(nar_bytes, &dump, &export, &first, &second, &none, quick);
    Ok(())
}

fn report(
    nar: u64,
    dump: &[Duration],
    export: &[Duration],
    first: &[Duration],
    second: &[Duration],
    none: &[Duration],
    quick: bool,
) {
    let best = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
    let all = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let row = |what: &str, v: &[Duration], base: Duration| {
        println!(
            "| {what} | {} s | {:.0} MiB/s | {:.2}x |",
            all(v),
            mib_per_s(nar, best(v)),
            base.as_secs_f64() / best(v).as_secs_f64()
        );
    };
    println!(
        "| first import, cold cache | runs | best, NAR bytes/s | throughput ratio to `--dump` |"
    );
    println!("| --- | --- | --- | --- |");
    row(
        "`nix-store --dump` each path \\| `sha256sum`",
        dump,
        best(dump),
    );
    row(
        "`nix-store --export` all \\| `sha256sum`",
        export,
        best(dump),
    );
    row("`build --dry-run`, fresh data dir", first, best(dump));
    let ratio = best(dump).as_secs_f64() / best(first).as_secs_f64();
    let med = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    let hit = med(second).saturating_sub(med(none));
    println!();
    println!(
        "| second `build --dry-run` (map hit) | median of {} |",
        second.len()
    );
    println!("| --- | --- |");
    println!("| with the closure | {:.1} ms |", ms(med(second)));
    println!("| without inputs | {:.1} ms |", ms(med(none)));
    println!("| the closure's share | {:.1} ms |", ms(hit));
    if quick {
        println!("(QUICK: 100 small paths, one round; the bars are for 1,000 paths)");
        return;
    }
    println!(
        "bar: first import >= {DUMP_BAR}x of --dump: {ratio:.2}x ({}); map hit < {} ms: {:.1} ms ({})",
        if ratio >= DUMP_BAR { "met" } else { "NOT met" },
        HIT_BAR.as_millis(),
        ms(hit),
        if hit < HIT_BAR { "met" } else { "NOT met" }
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Why Nix cannot be used here, if it cannot.
fn nix_missing() -> Option<String> {
    match Command::new("nix-instantiate")
        .args(["--eval", "-E", "1"])
        .output()
    {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "Nix cannot run here: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!(
            "Nix is not installed ({e}); apt-get install nix-bin"
        )),
    }
}

/// The benchmark's own NIX_CONF_DIR: no substituters, nothing built.
fn nix_conf(tmp: &Path) -> Res<PathBuf> {
    let conf = tmp.join("nix-conf");
    std::fs::create_dir_all(&conf)?;
    std::fs::write(conf.join("nix.conf"), "substituters =\n")?;
    Ok(conf)
}

fn nix_cmd(conf: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(args[0]);
    c.args(&args[1..])
        .env("NIX_CONF_DIR", conf)
        .env_remove("NIX_REMOTE");
    c
}

fn nix(conf: &Path, args: &[&str]) -> Res<String> {
    let o = nix_cmd(conf, args).stderr(Stdio::piped()).output()?;
    if !o.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8(o.stdout)?)
}

fn lines(s: String) -> Vec<String> {
    s.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `n` store path sources under `src` (`p0` …): a mix of sizes as a real
/// closure has, most small, a few large. Returns files and bytes written.
fn generate(src: &Path, n: usize, quick: bool) -> Res<(usize, u64)> {
    use std::os::unix::fs::PermissionsExt;
    let mut rng = Rng::new(14);
    let (mut files, mut bytes) = (0, 0u64);
    let mut write = |p: &Path, size: u64, exec: bool, rng: &mut Rng| -> Res<()> {
        let mut data = vec![0u8; usize::try_from(size)?];
        for c in data.chunks_mut(8) {
            let v = rng.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
        std::fs::write(p, &data)?;
        if exec {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
        }
        files += 1;
        bytes += size;
        Ok(())
    };
    let big = if quick { 1 << 20 } else { 12 << 20 };
    for i in 0..n {
        let p = src.join(format!("p{i}"));
        match rng.below(100) {
            // A single file: a patch, a script, a source file.
            0..60 => {
                std::fs::create_dir_all(src)?;
                let size = rng.below(32 << 10);
                write(&p, size, i % 7 == 0, &mut rng)?;
            }
            // A package: bin, lib, share, small files, a few links.
            k => {
                for d in ["bin", "lib", "share/doc"] {
                    std::fs::create_dir_all(p.join(d))?;
                }
                for j in 0..5 + rng.below(55) {
                    let dir = ["bin", "lib", "share/doc"][(j % 3) as usize];
                    let f = p.join(dir).join(format!("f{j}"));
                    let size = rng.below(16 << 10);
                    write(&f, size, dir == "bin", &mut rng)?;
                    if j % 10 == 3 {
                        std::os::unix::fs::symlink(
                            format!("f{j}"),
                            p.join(dir).join(format!("l{j}")),
                        )?;
                    }
                }
                // One in ten packages has a library of 256 KiB – 2 MiB,
                // one in fifty a large one.
                let lib = match k {
                    90..98 => Some(256 * 1024 + rng.below(7 << 18)),
                    98.. => Some(big / 3 + rng.below(big)),
                    _ => None,
                };
                if let Some(size) = lib {
                    write(&p.join("lib/libbig.so"), size, false, &mut rng)?;
                }
            }
        }
    }
    Ok((files, bytes))
}

/// The derivation with the `n` paths as input sources (each added to the
/// store by Nix), and one without inputs; their .drv paths.
fn instantiate(tmp: &Path, conf: &Path, n: usize) -> Res<(String, String)> {
    let expr = format!(
        r#"
let
  base = {{ system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "true" ]; }};
  src = i: builtins.path {{ path = ./src + "/p${{toString i}}"; name = "closure-bench-${{toString i}}"; }};
in {{
  full = derivation (base // {{ name = "closure-bench"; inputs = builtins.genList src {n}; }});
  empty = derivation (base // {{ name = "closure-bench-empty"; }});
}}
"#
    );
    let f = tmp.join("closure.nix");
    std::fs::write(&f, expr)?;
    let f = f.to_str().ok_or("the temp dir's path is not UTF-8")?;
    let drvs = lines(nix(
        conf,
        &["nix-instantiate", f, "-A", "full", "-A", "empty"],
    )?);
    match <[String; 2]>::try_from(drvs) {
        Ok([full, empty]) => Ok((full, empty)),
        Err(v) => Err(format!("nix-instantiate printed {v:?}, not two .drv paths").into()),
    }
}

/// The sum of the paths' NAR sizes, as Nix's database has them.
fn sizes(conf: &Path, paths: &[String]) -> Res<u64> {
    let mut args = vec!["nix-store", "--query", "--size"];
    args.extend(paths.iter().map(String::as_str));
    let mut total = 0u64;
    for l in lines(nix(conf, &args)?) {
        total += l.trim().parse::<u64>()?;
    }
    Ok(total)
}

/// `nix-store --dump P | sha256sum` for each path, one after another.
fn dump_each(conf: &Path, paths: &[String]) -> Res<()> {
    let script =
        r#"for p in "$@"; do nix-store --dump "$p" | sha256sum > /dev/null || exit 1; done"#;
    let mut c = Command::new("sh");
    c.args(["-c", script, "sh"])
        .args(paths)
        .env("NIX_CONF_DIR", conf)
        .env_remove("NIX_REMOTE");
    let s = c.status()?;
    if !s.success() {
        return Err(format!("nix-store --dump of the closure failed: {s}").into());
    }
    Ok(())
}

/// `nix-store --export` of all the paths into `sha256sum`.
fn export_all(conf: &Path, paths: &[String]) -> Res<()> {
    let mut export = nix_cmd(conf, &["nix-store", "--export"])
        .args(paths)
        .stdout(Stdio::piped())
        .spawn()?;
    let out = export
        .stdout
        .take()
        .ok_or("nix-store --export: no stdout")?;
    let sum = Command::new("sha256sum")
        .stdin(out)
        .stdout(Stdio::null())
        .status()?;
    let s = export.wait()?;
    if !s.success() || !sum.success() {
        return Err(format!("nix-store --export | sha256sum failed: {s}, {sum}").into());
    }
    Ok(())
}

/// `tvix-oci-build build --dry-run DRV` with its data dir (store and map)
/// under `data`.
fn dry_run(bin: &Path, data: &Path, drv: &str) -> Res<()> {
    let o = Command::new(bin)
        .env("XDG_DATA_HOME", data)
        .env_remove("BLOB_SERVICE_ADDR")
        .env_remove("DIRECTORY_SERVICE_ADDR")
        .args(["build", "--dry-run", drv])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    if !o.status.success() {
        return Err(format!(
            "build --dry-run {drv} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )
        .into());
    }
    Ok(())
}

/// The store paths the map under `data` holds (`tvix-oci-build/nix-paths/
/// <store key>/<base name>`, see crates/cli/src/nix_paths.rs).
fn count_mapped(data: &Path) -> Res<usize> {
    let mut n = 0;
    for store in std::fs::read_dir(data.join("tvix-oci-build/nix-paths"))? {
        n += std::fs::read_dir(store?.path())?.count();
    }
    Ok(n)
}
