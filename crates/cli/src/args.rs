//! Command-line arguments.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tvix_oci_castore::grpc::{StoreTimeouts, parse_seconds};

/// Run hermetic builds of content-addressed inputs in OCI containers, and
/// manage the castore they read from and write to.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Blob store URL (memory://, objects:///path, grpc+http://host:port,
    /// grpc+unix:///path, objectstore+s3://bucket/prefix,
    /// objectstore+file:///path). Default: the embedded store in the data dir.
    #[arg(long, env = "BLOB_SERVICE_ADDR", global = true)]
    pub blob_service_addr: Option<String>,

    /// Directory store URL (memory://, redb:///path, grpc+http://host:port,
    /// grpc+unix:///path, objectstore+s3://bucket/prefix,
    /// objectstore+file:///path). Default: the embedded store in the data dir.
    #[arg(long, env = "DIRECTORY_SERVICE_ADDR", global = true)]
    pub directory_service_addr: Option<String>,

    /// Seconds to wait for a gRPC store to accept a connection. A store
    /// URL's ?connect_timeout= overrides it.
    #[arg(long, value_name = "SECONDS", global = true, default_value = "10", value_parser = parse_seconds)]
    pub store_connect_timeout: Duration,

    /// Seconds to wait for a gRPC store's first answer to a call (a reply,
    /// the start of a stream). A store URL's ?timeout= overrides it.
    #[arg(long, value_name = "SECONDS", global = true, default_value = "30", value_parser = parse_seconds)]
    pub store_timeout: Duration,

    /// Seconds a stream from or to a gRPC store may stay silent (no next
    /// chunk, no room to send one). A store URL's ?idle_timeout= overrides it.
    #[arg(long, value_name = "SECONDS", global = true, default_value = "30", value_parser = parse_seconds)]
    pub store_idle_timeout: Duration,

    /// More log output (-v: info, -vv: debug). RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The bounds on waiting for a gRPC store, from the flags.
    pub fn store_timeouts(&self) -> StoreTimeouts {
        StoreTimeouts {
            connect: self.store_connect_timeout,
            first_byte: self.store_timeout,
            idle: self.store_idle_timeout,
        }
    }

    /// The default log filter. fuser logs a reply to a request the kernel
    /// already dropped (the reader was killed: ENOENT) as an error; that is
    /// normal at the end of a build, so its reply log is off unless
    /// RUST_LOG asks for it. `serve` logs each build it is asked for and
    /// how it ended (its gRPC module) at every level.
    pub fn log_level(&self) -> &'static str {
        match self.verbose {
            0 => "warn,fuser::reply=off,tvix_oci_executor::grpc=info",
            1 => "info,fuser::reply=off",
            _ => "debug",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run builds: from request files, or from flags (local paths are
    /// imported as inputs first).
    ///
    /// Examples:
    ///   tvix-oci-build run request.json
    ///   tvix-oci-build run --input busybox=/bin/busybox --output build/out \
    ///       -- /nix/store/busybox sh -c 'echo hi > /build/out'
    Run(Box<RunArgs>),
    /// Build Nix derivations (.drv files) as Nix's sandbox would, the
    /// inputs taken from the local Nix store; prints each output's store
    /// path, NAR hash, NAR size and references as JSON.
    ///
    /// Example: tvix-oci-build build $(nix-instantiate hello.nix)
    Build(Box<crate::commands::BuildArgs>),
    /// Print the OCI runtime config.json a request would run with, without
    /// running it.
    ///
    /// Example: tvix-oci-build spec request.json
    Spec {
        /// A JSON or binary protobuf request, or - for stdin.
        request: PathBuf,
        #[command(flatten)]
        limits: Box<LimitArgs>,
    },
    /// List a stored directory: DIGEST or DIGEST/PATH.
    ///
    /// Example: tvix-oci-build ls 8b5b5d64…810e/bin
    Ls {
        /// Digest of a directory in the store, optionally followed by /PATH.
        node: String,
    },
    /// Print a stored file: DIGEST/PATH (or the digest of a blob).
    ///
    /// A file of up to 64 MiB is read whole and checked against its digest
    /// and declared size before a byte is printed. A larger one streams:
    /// bytes may be printed before a mismatch is found; `cat` then exits
    /// with 3 and says how many bytes printed are not verified.
    ///
    /// Example: tvix-oci-build cat 8b5b5d64…810e/etc/hosts
    Cat {
        /// Digest of a directory followed by /PATH, or of a blob.
        node: String,
    },
    /// Mount stored directories or blobs (lazily, through FUSE) in the
    /// foreground, each under its digest or NAME=DIGEST; Ctrl-C unmounts.
    ///
    /// Example: tvix-oci-build mount gcc=8b5b5d64…810e /mnt/inputs
    Mount {
        /// NAME=DIGEST or DIGEST, then the mount point (an empty directory).
        #[arg(required = true, num_args = 2..)]
        args: Vec<String>,
    },
    /// Import local paths into the store and print each root's digest.
    ///
    /// Example: tvix-oci-build import /usr/share/zoneinfo
    Import {
        /// Files, directories or symlinks to import.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Serve the store over gRPC (tvix.castore.v1 and snix.castore.v1
    /// BlobService and DirectoryService) and run builds sent to the
    /// tvix.build.v1 (or snix.build.v1) BuildService, until Ctrl-C or
    /// SIGTERM.
    ///
    /// Examples:
    ///   tvix-oci-build serve --listen 127.0.0.1:8000
    ///   BLOB_SERVICE_ADDR=grpc+http://127.0.0.1:8000 tvix-oci-build import ./src
    ///   tvix-oci-build serve --http 127.0.0.1:8080   # and open http://127.0.0.1:8080
    Serve {
        /// HOST:PORT to listen on (port 0 picks a free one), or
        /// unix:/path/to.sock. The address is printed once listening.
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: String,
        /// Also serve a page to watch the builds (running and recent, with
        /// their live logs) over HTTP on ADDR (IP:PORT; port 0 picks a
        /// free one; printed once listening). It has no authentication:
        /// keep it on loopback, or behind a proxy that has.
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
        /// Seconds an upload (BlobService.Put, DirectoryService.Put) may
        /// send nothing before it is dropped, with what it had sent.
        #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_seconds)]
        upload_idle_timeout: Duration,
        #[command(flatten)]
        exec: Box<ExecArgs>,
    },
    /// Write a stored directory or blob out to a new path.
    ///
    /// Everything is written under a temporary name beside DEST and renamed
    /// to DEST only once every blob (its digest and declared size) and
    /// directory was verified: on failure (exit 3, naming the digest)
    /// nothing is left at DEST.
    ///
    /// Example: tvix-oci-build export 8b5b5d64…810e /tmp/out
    Export {
        /// Digest (hex or base64) of a directory or blob in the store.
        digest: String,
        /// Where to write it; must not exist.
        dest: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Build requests: JSON or binary tvix.build.v1 BuildRequest files, or
    /// - for stdin. Leave out to describe the build with flags.
    pub requests: Vec<PathBuf>,

    /// An input, imported from a local path: NAME=PATH (or just PATH, named
    /// by its file name). It appears at /INPUTS_DIR/NAME.
    #[arg(long, value_name = "NAME=PATH")]
    pub input: Vec<String>,
    /// A path the build must produce, relative (e.g. build/out).
    #[arg(long, value_name = "PATH")]
    pub output: Vec<String>,
    /// An environment variable of the build: KEY=VALUE.
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// A string to look for in the outputs (a store path hash).
    #[arg(long)]
    pub needle: Vec<String>,
    /// Give the build network access.
    #[arg(long)]
    pub network: bool,
    /// Provide /bin/sh (the sandbox shell).
    #[arg(long)]
    pub sh: bool,
    /// Where the inputs appear.
    #[arg(long, default_value = "nix/store")]
    pub inputs_dir: String,
    /// Writable paths.
    #[arg(long = "scratch", default_values = ["build", "nix/store"])]
    pub scratch: Vec<String>,
    /// The build's working directory.
    #[arg(long, default_value = "build")]
    pub workdir: String,
    /// Print the request as JSON instead of running it.
    #[arg(long)]
    pub dry_run: bool,
    /// Build on the `serve` at URL (grpc+http://HOST:PORT or
    /// grpc+unix:///PATH) instead of here: --input paths are imported into
    /// its store first, the log streams to stderr as it is written, and
    /// the result and exit code are a local run's. The server's own
    /// settings (timeouts, limits, jobs) apply, not this command's.
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
    /// With --remote: how many times a build is tried again when its
    /// server was busy or unreachable, or failed for its own host's or
    /// store's fault (never for the build's own failure).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub retries: u32,

    #[command(flatten)]
    pub exec: ExecArgs,

    /// The command of the build and its arguments (after --).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `--inputs-view`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InputsView {
    Auto,
    Fuse,
}

/// How builds are run: shared by `run` and `serve`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Keep each bundle directory after the build, for debugging.
    #[arg(long)]
    pub keep_bundle: bool,
    /// Kill a build running longer than this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Kill a build silent for this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub max_silent_time: Option<u64>,
    /// Builds run at once (several requests, or clients of `serve`);
    /// more wait. Default: the number of CPUs.
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Builds that may wait for one of the --jobs at once; one more is
    /// refused at once (`serve`: RESOURCE_EXHAUSTED, so a load balancer
    /// can send it to another builder; `run`: exit 3). `0`: none wait.
    /// Default: no bound.
    #[arg(long, value_name = "N")]
    pub queue: Option<usize>,
    /// Where bundles are made.
    #[arg(long)]
    pub bundle_root: Option<PathBuf>,
    /// The OCI runtime.
    #[arg(long, default_value = "runc")]
    pub runtime: PathBuf,
    /// The shell bound at /bin/sh for builds asking for it (default: a
    /// static busybox, when installed).
    #[arg(long)]
    pub sandbox_shell: Option<PathBuf>,
    /// Memory a build may use (bytes, or with K, M, G); past it the
    /// kernel kills the build.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory_limit: Option<u64>,
    /// serve: the size of the blob cache under the data dir (bytes, or
    /// with K, M, G), shared by all its builds: a blob of a store that is
    /// not on local disk (gRPC, S3) is fetched once, then read from there;
    /// past the size, the least recently used blobs are removed.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "10G")]
    pub blob_cache_size: u64,
    /// Learned prefetch: keep in DIR, per build shape (its inputs and
    /// command), the input blobs each successful build read, and fetch
    /// them when the next build of that shape mounts its inputs, racing
    /// the build. Off without it.
    #[arg(long, value_name = "DIR")]
    pub prefetch_profiles: Option<PathBuf>,
    /// How builds see their inputs. `auto`: as root, inputs whose blobs
    /// are all files on this machine (the embedded store) are shown with
    /// no FUSE daemon, at native speed (their directories written once as
    /// trees of hard links to the blob files under --kernel-view-cache);
    /// any other inputs through FUSE. `fuse`: always through FUSE.
    #[arg(long, value_enum, default_value = "auto")]
    pub inputs_view: InputsView,
    /// Where `--inputs-view auto` keeps its trees (one inode per input
    /// directory, kept across builds); it must be on the blob store's file
    /// system. Default: kernel-view in the data dir.
    #[arg(long, value_name = "DIR")]
    pub kernel_view_cache: Option<PathBuf>,
    /// Processes a build may have at once; 0 or none: unlimited.
    #[arg(long, value_name = "N", default_value = "4096", value_parser = parse_pids)]
    pub pids_limit: PidsLimit,
    /// CPUs' worth of time a build may use, e.g. 1.5.
    #[arg(long, value_name = "CPUS")]
    pub cpus: Option<f64>,
    /// A host path requests may name in constraints.available_ro_paths
    /// (exactly this path; repeat for more), e.g. /dev/kvm. It is bound
    /// read-only, with everything mounted below it. None by default: such
    /// requests are refused.
    #[arg(long = "allow-ro-path", value_name = "PATH", value_parser = parse_abs_path)]
    pub allow_ro_path: Vec<PathBuf>,
    /// As root, the host ids builds' user namespaces map to: START:COUNT,
    /// 65536 per build at once (default: Nix's auto-allocate-uids range,
    /// 872415232:8388608). No account of the host may have an id in it.
    #[arg(long, value_name = "START:COUNT", value_parser = parse_id_pool)]
    pub id_pool: Option<(u32, u32)>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// `--pids-limit`: `None` is unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidsLimit(pub Option<u32>);

fn parse_pids(s: &str) -> Result<PidsLimit, String> {
    match s.trim() {
        "none" | "0" => Ok(PidsLimit(None)),
        n => n
            .parse::<u32>()
            .map(|n| PidsLimit(Some(n)))
            .map_err(|_| format!("{s:?} is not a number of processes (or 0 or none: unlimited)")),
    }
}

fn parse_abs_path(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(format!("{s:?} is not an absolute path"))
    }
}

/// The largest request accepted (`serve`, `run` and `spec` alike, so a
/// request `spec` accepts is one `serve` with the same flags accepts). The
/// defaults, generous for Nix, are those of `RequestLimits`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Request limits")]
pub struct LimitArgs {
    /// Inputs of a request [default: 262144]; refscan needles may be as
    /// many as inputs and outputs together.
    #[arg(long, value_name = "N")]
    pub max_inputs: Option<usize>,
    /// Outputs of a request [default: 4096].
    #[arg(long, value_name = "N")]
    pub max_outputs: Option<usize>,
    /// Environment variables of a request [default: 16384].
    #[arg(long, value_name = "N")]
    pub max_env_vars: Option<usize>,
    /// Command arguments of a request [default: 65536].
    #[arg(long, value_name = "N")]
    pub max_args: Option<usize>,
    /// Scratch paths, and available read-only paths, of a request
    /// [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_scratch_paths: Option<usize>,
    /// Additional files of a request [default: 4096].
    #[arg(long, value_name = "N")]
    pub max_additional_files: Option<usize>,
    /// Bytes of all additional files of a request together [default: 32M].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_additional_bytes: Option<u64>,
    /// Bytes of a request (encoded protobuf) [default: 64M]; `serve`
    /// decodes no larger message.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_request_bytes: Option<u64>,
}

impl LimitArgs {
    /// The limits: the defaults, each flag given replacing one.
    pub fn limits(&self) -> tvix_oci_spec::RequestLimits {
        let d = tvix_oci_spec::RequestLimits::default();
        let inputs = self.max_inputs.unwrap_or(d.inputs);
        let outputs = self.max_outputs.unwrap_or(d.outputs);
        tvix_oci_spec::RequestLimits {
            inputs,
            outputs,
            refscan_needles: inputs.saturating_add(outputs),
            environment_vars: self.max_env_vars.unwrap_or(d.environment_vars),
            command_args: self.max_args.unwrap_or(d.command_args),
            scratch_paths: self.max_scratch_paths.unwrap_or(d.scratch_paths),
            additional_files: self.max_additional_files.unwrap_or(d.additional_files),
            additional_files_bytes: self
                .max_additional_bytes
                .unwrap_or(d.additional_files_bytes),
            request_bytes: self.max_request_bytes.unwrap_or(d.request_bytes),
        }
    }
}

fn parse_id_pool(s: &str) -> Result<(u32, u32), String> {
    tvix_oci_executor::idpool::parse_range(s).map_err(|e| e.to_string())
}

/// A size in bytes, with an optional K, M or G (powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size like 4294967296, 512M or 4G"))
}
