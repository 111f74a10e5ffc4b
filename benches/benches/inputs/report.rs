//! The input benchmark's output: a JSON file of every figure (with the
//! machine and date), a Markdown table, and SVG plots — latency CDFs of
//! `stat` and of open-to-first-byte, and sequential-read throughput bars —
//! under `benches/results/` (`benches/results/quick/` in quick mode;
//! `e2e.json` and `e2e.md` for an `E2E_ONLY` run).

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::json;

use crate::e2e::E2e;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// One variant of one tree from one placement.
pub struct Row {
    pub tree: String,
    pub placement: String,
    pub variant: String,
    /// Mount (and first listing), or for native the export.
    pub setup_ms: f64,
    pub stat_p50_us: f64,
    pub stat_p99_us: f64,
    pub first_byte_p50_us: f64,
    pub first_byte_p99_us: f64,
    pub seq_mib_s: f64,
    pub tree_read_s: f64,
    pub tree_read_mib: f64,
    /// Every sample, for the CDFs.
    pub stat_us: Vec<f64>,
    pub first_byte_us: Vec<f64>,
}

impl Row {
    fn label(&self) -> String {
        format!("{} / {}", self.placement, self.variant)
    }

    /// The Markdown table row.
    pub fn line(&self) -> String {
        format!(
            "| {} | {} | {} | {:.1} ms | {:.1} / {:.1} µs | {:.0} / {:.0} µs | {:.0} MiB/s | {:.2} s |",
            self.tree,
            self.placement,
            self.variant,
            self.setup_ms,
            self.stat_p50_us,
            self.stat_p99_us,
            self.first_byte_p50_us,
            self.first_byte_p99_us,
            self.seq_mib_s,
            self.tree_read_s,
        )
    }
}

fn machine() -> serde_json::Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = std::process::Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "kernel": kernel.trim(),
        "date": date,
    })
}

/// Writes the JSON, the Markdown and the plots; prints the Markdown.
pub fn write(rows: &[Row], e2e: Option<&E2e>, quick: bool) -> Res<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(if quick {
        "results/quick"
    } else {
        "results"
    });
    std::fs::create_dir_all(&dir)?;
    let m = machine();
    let doc = json!({
        "machine": m,
        "rows": rows.iter().map(|r| json!({
            "tree": r.tree, "placement": r.placement, "variant": r.variant,
            "setup_ms": r.setup_ms,
            "stat_p50_us": r.stat_p50_us, "stat_p99_us": r.stat_p99_us,
            "first_byte_p50_us": r.first_byte_p50_us, "first_byte_p99_us": r.first_byte_p99_us,
            "seq_mib_s": r.seq_mib_s, "tree_read_s": r.tree_read_s, "tree_read_mib": r.tree_read_mib,
        })).collect::<Vec<_>>(),
        "e2e": e2e.map(E2e::json),
    });
    // E2E_ONLY runs write beside, not over, a full run's files.
    let name = if rows.is_empty() { "e2e" } else { "inputs" };
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(&doc)?,
    )?;

    let mut md = String::new();
    let _ = writeln!(
        md,
        "Machine: {} CPUs, Linux {}, {}.\n",
        m["cpus"],
        m["kernel"].as_str().unwrap_or(""),
        m["date"].as_str().unwrap_or("")
    );
    md.push_str("| tree | store | variant | setup | stat p50 / p99 | first byte p50 / p99 | sequential read | whole tree (8 readers) |\n");
    md.push_str("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for r in rows {
        md.push_str(&r.line());
        md.push('\n');
    }
    if let Some(e) = e2e {
        let s = |d: std::time::Duration| d.as_secs_f64();
        let _ = writeln!(
            md,
            "\nEnd to end, `zig cc -O2 -c zstd.c` (zstandard 0.25.0's zstd), page cache dropped before each, median of {} rounds:\n",
            e.reps
        );
        md.push_str("| how | wall | ratio to the host |\n| --- | --- | --- |\n");
        let rows = [
            ("on the host, toolchain on local disk", e.host),
            ("executor, lazy inputs from the local store", e.lazy_local),
            ("executor, the local store as a kernel view", e.kernel_local),
            (
                "executor, lazy inputs from a gRPC store at 1 ms",
                e.lazy_remote,
            ),
            (
                "executor, lazy inputs from a gRPC store at 10 ms",
                e.lazy_remote10,
            ),
            (
                "the same, with the prefetch profile of the build before",
                e.lazy_remote10_profiled,
            ),
            ("export the toolchain, then build", e.eager_total),
        ];
        for (how, d) in rows {
            let _ = writeln!(md, "| {how} | {:.2} s | {:.2}x |", s(d), s(d) / s(e.host));
        }
        let _ = writeln!(
            md,
            "\nThe export alone took {:.2} s. Of the toolchain's {:.0} MiB, the compile opened files \
             totalling {:.0} MiB (fetched whole from the gRPC store). Lazy from the local store was \
             {:.2}x faster than export-then-build; its first instruction ran after {}. With the \
             profile, {:.0} MiB were prefetched, of which the build read {:.0} MiB.",
            s(e.eager_export),
            e.toolchain_bytes as f64 / 1048576.0,
            e.remote_bytes_fetched as f64 / 1048576.0,
            s(e.eager_total) / s(e.lazy_local),
            e.lazy_local_first
                .map_or("—".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3)),
            e.prefetched.0 as f64 / 1048576.0,
            e.prefetched.1 as f64 / 1048576.0,
        );
    }
    std::fs::write(dir.join(format!("{name}.md")), &md)?;
    println!("\n{md}");

    for tree in unique(rows.iter().map(|r| r.tree.as_str())) {
        let of_tree: Vec<&Row> = rows.iter().filter(|r| r.tree == tree).collect();
        let slug: String = tree
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let cdf = |f: fn(&Row) -> &Vec<f64>, what: &str| {
            cdf_svg(
                &format!("{what}, {tree}"),
                &of_tree
                    .iter()
                    .map(|r| (r.label(), f(r).clone()))
                    .collect::<Vec<_>>(),
            )
        };
        std::fs::write(
            dir.join(format!("{slug}-stat-cdf.svg")),
            cdf(|r| &r.stat_us, "stat latency"),
        )?;
        std::fs::write(
            dir.join(format!("{slug}-first-byte-cdf.svg")),
            cdf(|r| &r.first_byte_us, "open to first byte"),
        )?;
        std::fs::write(
            dir.join(format!("{slug}-throughput.svg")),
            bars_svg(
                &format!("sequential read, 3 largest files, {tree}"),
                &of_tree
                    .iter()
                    .map(|r| (r.label(), r.seq_mib_s))
                    .collect::<Vec<_>>(),
            ),
        )?;
    }
    println!("results in {}", dir.display());
    Ok(())
}

fn unique<'a>(it: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut v: Vec<&str> = Vec::new();
    for s in it {
        if !v.contains(&s) {
            v.push(s);
        }
    }
    v
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Latency CDFs on a log-scale x axis (µs), one line per series.
fn cdf_svg(title: &str, series: &[(String, Vec<f64>)]) -> String {
    let (w, h, left, top, bottom) = (900.0, 520.0, 60.0, 40.0, 60.0);
    let all = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| *v > 0.0);
    let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo < hi {
        (lo.log10().floor(), hi.log10().ceil())
    } else {
        (0.0, 1.0)
    };
    let plot_w = w - left - 300.0;
    let plot_h = h - top - bottom;
    let x = |v: f64| left + (v.max(1e-3).log10() - lo) / (hi - lo) * plot_w;
    let y = |q: f64| top + (1.0 - q) * plot_h;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{left}" y="20" font-size="14">{}</text>"#,
        esc(title)
    );
    let mut decade = lo;
    while decade <= hi {
        let px = x(10f64.powf(decade));
        let _ = write!(
            s,
            r##"<line x1="{px:.1}" y1="{top}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            top + plot_h,
            top + plot_h + 16.0,
            fmt_us(10f64.powf(decade))
        );
        decade += 1.0;
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">latency (log scale)</text><text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})">fraction of operations</text>"#,
        left + plot_w / 2.0,
        h - 12.0,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    for q in [0.0, 0.5, 1.0] {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{q}</text>"#,
            left - 6.0,
            y(q) + 4.0
        );
    }
    for (i, (label, values)) in series.iter().enumerate() {
        let mut v = values.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len().max(1) as f64;
        let step = (v.len() / 400).max(1);
        let pts: Vec<String> = v
            .iter()
            .enumerate()
            .step_by(step)
            .map(|(k, val)| format!("{:.1},{:.1}", x(*val), y((k + 1) as f64 / n)))
            .collect();
        let color = COLORS[i % COLORS.len()];
        let dash = if i >= COLORS.len() {
            r#" stroke-dasharray="5,3""#
        } else {
            ""
        };
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5"{dash} points="{}"/><rect x="{:.1}" y="{:.1}" width="12" height="3" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            pts.join(" "),
            left + plot_w + 20.0,
            top + 10.0 + i as f64 * 18.0,
            left + plot_w + 38.0,
            top + 15.0 + i as f64 * 18.0,
            esc(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.0} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.0} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

/// Horizontal bars, one per series (MiB/s).
fn bars_svg(title: &str, bars: &[(String, f64)]) -> String {
    let (w, left, bar_h) = (900.0, 330.0, 20.0);
    let h = 60.0 + bars.len() as f64 * (bar_h + 6.0);
    let max = bars.iter().map(|b| b.1).fold(1.0, f64::max);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="14">{}</text>"#,
        esc(title)
    );
    for (i, (label, v)) in bars.iter().enumerate() {
        let y0 = 40.0 + i as f64 * (bar_h + 6.0);
        let bw = v / max * (w - left - 110.0);
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><rect x="{left}" y="{y0:.1}" width="{bw:.1}" height="{bar_h}" fill="{}"/><text x="{:.1}" y="{:.1}">{v:.0} MiB/s</text>"#,
            left - 8.0,
            y0 + 14.0,
            esc(label),
            COLORS[i % COLORS.len()],
            left + bw + 6.0,
            y0 + 14.0
        );
    }
    s.push_str("</svg>\n");
    s
}
