//! [`make_spec`]: the OCI runtime spec (`config.json`) that runs a build.
//! Pure: no IO. Paths of bind-mount sources are relative to the bundle
//! (runc resolves them there), so the spec does not depend on where the
//! bundle lives.
//!
//! The inputs are one mount whatever their number: `inputs_dir` is a
//! read-write bind of the bundle's `store/` (the executor's overlay of the
//! FUSE `inputs/` and `outputs/upper`) when it is also a scratch path, and a
//! read-only bind of `inputs/` otherwise.

use std::path::PathBuf;

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxIdMapping,
    LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder,
    PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
    get_default_mounts, get_rootless_mounts,
};

use crate::BuildRequest;
use crate::bundle::{BundleLayout, scratch_name};
use crate::seccomp;

/// The OCI version written; runc 1.1 and later accept it.
pub const OCI_VERSION: &str = "1.0.2";
/// The build user inside the container.
pub const BUILD_UID: u32 = 1000;
/// The build group inside the container.
pub const BUILD_GID: u32 = 100;

/// runc's default masked paths plus those Docker and later runc add
/// (those under `/sys` left out: the build has no `/sys`, as in Nix).
const MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
];

const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// One range of a user-namespace id mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMapping {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

impl IdMapping {
    /// The host id of `id` inside the container, if this range maps it.
    pub fn host_of(&self, id: u32) -> Option<u32> {
        let off = id.checked_sub(self.container_id)?;
        (off < self.size).then(|| self.host_id.saturating_add(off))
    }
}

/// The id mappings of a user namespace: container ids to host ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMappings {
    pub uid: Vec<IdMapping>,
    pub gid: Vec<IdMapping>,
}

impl IdMappings {
    /// The host uid and gid of container ids `uid` and `gid`, if mapped.
    pub fn host_of(&self, uid: u32, gid: u32) -> Option<(u32, u32)> {
        let u = self.uid.iter().find_map(|m| m.host_of(uid))?;
        let g = self.gid.iter().find_map(|m| m.host_of(gid))?;
        Some((u, g))
    }
}

/// The processes a build may have at once unless the operator says
/// otherwise: enough for a parallel compile, not for a fork bomb.
pub const DEFAULT_PIDS_LIMIT: i64 = 4096;

/// Limits put on the container: by default only [`DEFAULT_PIDS_LIMIT`].
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceLimits {
    pub memory_bytes: Option<i64>,
    /// `None`: unlimited.
    pub pids: Option<i64>,
    /// CPUs' worth of time, e.g. 1.5.
    pub cpus: Option<f64>,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        Self {
            memory_bytes: None,
            pids: Some(DEFAULT_PIDS_LIMIT),
            cpus: None,
        }
    }
}

/// How one of the request's `available_ro_paths` is bound, as the
/// executor prepared it after the operator allowed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoMount {
    /// The requested path: where it appears in the container, as on the host.
    pub path: String,
    /// What is bound there: relative to the bundle (`ro/N`, a recursively
    /// read-only clone of the host path), or an absolute host path
    /// (rootless, where the path has nothing mounted below it).
    pub source: PathBuf,
    /// A character or block device: bound without `nodev`.
    pub device: bool,
}

/// A soft and a hard resource limit (`RLIM_INFINITY` is `u64::MAX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rlimit {
    pub soft: u64,
    pub hard: u64,
}

/// The open-files limit of a build when the executor passes none: the
/// usual default soft limit of a Linux login.
pub const DEFAULT_NOFILE: Rlimit = Rlimit {
    soft: 1024,
    hard: 1024,
};

/// How the host runs builds: what is not in the request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpecOptions {
    /// Run rootless: runc is not root (its mounts are the rootless ones:
    /// `/sys` bound, not mounted). Needs `user_namespace`.
    pub rootless: bool,
    /// Run the build in a user namespace of its own with these mappings
    /// (rootless, and as root with ids from the build id pool); `None`:
    /// in the host's, the build user being host uid 1000:100.
    pub user_namespace: Option<IdMappings>,
    /// The root filesystem, absolute, when not the bundle's `root/`: as
    /// root with a user namespace, the container's root (an unprivileged
    /// host uid) must reach it, and the bundle's path may not let it.
    pub rootfs: Option<PathBuf>,
    /// Host path of the shell bound at `/bin/sh` when the request asks for
    /// `provide_bin_sh` (a static busybox, say).
    pub sandbox_shell: Option<PathBuf>,
    pub resources: ResourceLimits,
    /// The cgroup runc puts the container in (for accounting).
    pub cgroups_path: Option<PathBuf>,
    /// Mount the overlay that makes a writable inputs dir inside the
    /// container, from the bundle at this absolute path (rootless: the
    /// executor cannot mount it on the host, the container's user
    /// namespace can). `None`: the executor mounts it at `store/`.
    pub overlay_in_container: Option<PathBuf>,
    /// The prepared binds of the request's `available_ro_paths`; a
    /// requested path missing here is refused ([`SpecError::RoPathNotPrepared`]).
    pub ro_mounts: Vec<RoMount>,
    /// The build's `RLIMIT_NOFILE`. Nix's builder inherits the daemon's,
    /// so the executor passes its own (read when it makes the spec, which
    /// stays pure); `None`: [`DEFAULT_NOFILE`].
    pub open_files: Option<Rlimit>,
    /// The size of the `/dev/shm` tmpfs in bytes; `None`: the kernel's
    /// default, half of the RAM, as in Nix. Its pages are charged to the
    /// build's memory cgroup, so a memory limit bounds it too.
    pub shm_bytes: Option<u64>,
}

impl SpecOptions {
    /// The host uid and gid that the build user is, for owning the dirs it
    /// must write.
    pub fn build_owner_on_host(&self) -> Option<(u32, u32)> {
        match &self.user_namespace {
            None => Some((BUILD_UID, BUILD_GID)),
            Some(maps) => maps.host_of(BUILD_UID, BUILD_GID),
        }
    }

    /// The host uid and gid that the container's root is: who owns the
    /// root filesystem.
    pub fn root_on_host(&self) -> Option<(u32, u32)> {
        match &self.user_namespace {
            None => Some((0, 0)),
            Some(maps) => maps.host_of(0, 0),
        }
    }
}

/// Why no spec could be made.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(
        "the request asks for provide_bin_sh, but no sandbox shell is configured (e.g. a static busybox)"
    )]
    NoSandboxShell,
    #[error(
        "environment variable {key:?} has a value that is not UTF-8, which an OCI spec cannot carry"
    )]
    NonUtf8Env { key: String },
    #[error(
        "the build's user namespace needs uid and gid mappings that map the build user {BUILD_UID}:{BUILD_GID}"
    )]
    RootlessMappings,
    #[error(
        "the bundle path {0:?} holds ',' or ':', which an overlay mount inside the container cannot take"
    )]
    OverlayPath(String),
    #[error(
        "constraints.available_ro_paths: {0} was not prepared by the executor (only paths the operator allows are bound)"
    )]
    RoPathNotPrepared(String),
    #[error("building the OCI spec: {0}")]
    Oci(#[from] OciSpecError),
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, OciSpecError> {
    MountBuilder::default()
        .destination(PathBuf::from(dest))
        .typ(typ)
        .source(PathBuf::from(source))
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
}

fn ids(maps: &[IdMapping]) -> Result<Vec<LinuxIdMapping>, OciSpecError> {
    maps.iter()
        .map(|m| {
            LinuxIdMappingBuilder::default()
                .container_id(m.container_id)
                .host_id(m.host_id)
                .size(m.size)
                .build()
        })
        .collect()
}

/// The mounts a request needs beyond the runtime's defaults, parents first.
fn build_mounts(req: &BuildRequest, opts: &SpecOptions) -> Result<Vec<Mount>, SpecError> {
    const RW: &[&str] = &["rbind", "rw", "nosuid", "nodev"];
    const RO: &[&str] = &["rbind", "ro", "nosuid", "nodev"];
    // On disk under the bundle, like the scratch paths: not RAM.
    let mut m = vec![mount("/tmp", "none", BundleLayout::TMP, RW)?];
    let dest = |p: &crate::path::CleanPath| format!("/{p}");
    if req.inputs_dir_is_scratch()
        && let Some(bundle) = &opts.overlay_in_container
    {
        let b = BundleLayout::new(bundle);
        let dirs = [
            ("lowerdir", b.inputs()),
            ("upperdir", b.upper()),
            ("workdir", b.work()),
        ];
        let mut options: Vec<String> = dirs
            .iter()
            .map(|(k, p)| {
                let p = p.to_string_lossy();
                // The kernel splits overlay options at ',' (and lowerdir at ':').
                if p.contains([',', ':']) {
                    Err(SpecError::OverlayPath(p.into_owned()))
                } else {
                    Ok(format!("{k}={p}"))
                }
            })
            .collect::<Result<_, _>>()?;
        options.extend(["userxattr", "nosuid", "nodev"].map(String::from));
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        m.push(mount(
            &dest(req.inputs_dir()),
            "overlay",
            "overlay",
            &options,
        )?);
    } else if req.inputs_dir_is_scratch() {
        m.push(mount(
            &dest(req.inputs_dir()),
            "none",
            BundleLayout::STORE,
            RW,
        )?);
    } else {
        m.push(mount(
            &dest(req.inputs_dir()),
            "none",
            BundleLayout::INPUTS,
            RO,
        )?);
    }
    for s in req
        .scratch_paths()
        .iter()
        .filter(|s| *s != req.inputs_dir())
    {
        let src = format!("{}/{}", BundleLayout::SCRATCH, scratch_name(s));
        m.push(mount(&dest(s), "none", &src, RW)?);
    }
    let c = req.constraints();
    for p in &c.available_ro_paths {
        let host = p.to_host();
        let prepared = opts
            .ro_mounts
            .iter()
            .find(|r| r.path == host)
            .ok_or_else(|| SpecError::RoPathNotPrepared(host.clone()))?;
        // A device the operator allowed (/dev/kvm) must stay usable.
        let options: &[&str] = if prepared.device {
            &["rbind", "ro", "nosuid"]
        } else {
            RO
        };
        m.push(mount(
            &host,
            "none",
            &prepared.source.to_string_lossy(),
            options,
        )?);
    }
    if c.network_access {
        for f in ["/etc/resolv.conf", "/etc/services", "/etc/hosts"] {
            m.push(mount(f, "none", f, RO)?);
        }
    }
    if c.provide_bin_sh {
        let sh = opts
            .sandbox_shell
            .as_ref()
            .ok_or(SpecError::NoSandboxShell)?;
        m.push(mount(
            "/bin/sh",
            "none",
            &sh.to_string_lossy(),
            &["rbind", "ro", "nosuid", "nodev"],
        )?);
    }
    m.sort_by_key(|m| m.destination().components().count());
    Ok(m)
}

/// The runtime's default mounts as Nix's sandbox has them: no `/sys` (Nix
/// mounts none; nor its cgroup below), and `/dev/shm` a tmpfs like Nix's
/// (1777, exec allowed, [`SpecOptions::shm_bytes`]; nosuid and nodev kept,
/// which no build can tell: seccomp refuses setuid bits and `mknod`).
fn runtime_mounts(defaults: Vec<Mount>, opts: &SpecOptions) -> Result<Vec<Mount>, SpecError> {
    let mut shm = vec!["nosuid", "nodev", "mode=1777"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    if let Some(b) = opts.shm_bytes {
        shm.push(format!("size={b}"));
    }
    let shm: Vec<&str> = shm.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for m in defaults {
        let dest = m.destination();
        if dest.starts_with("/sys") {
            continue;
        }
        if dest == std::path::Path::new("/dev/shm") {
            out.push(mount("/dev/shm", "tmpfs", "shm", &shm)?);
        } else {
            out.push(m);
        }
    }
    Ok(out)
}

/// The process's rlimits: as in Nix, `RLIMIT_CORE` soft 0 (no core
/// dumps) and hard unlimited, `RLIMIT_NOFILE` the executor's
/// ([`SpecOptions::open_files`]); the others are inherited from runc.
/// Rootless, where no cgroup holds a pids limit, the limit is RLIMIT_NPROC
/// of the build user (its processes in the container's user namespace).
fn rlimits(opts: &SpecOptions) -> Result<Vec<oci_spec::runtime::PosixRlimit>, OciSpecError> {
    let nofile = opts.open_files.unwrap_or(DEFAULT_NOFILE);
    let mut r = vec![
        PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitCore)
            .hard(u64::MAX)
            .soft(0u64)
            .build()?,
        PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(nofile.hard)
            .soft(nofile.soft.min(nofile.hard))
            .build()?,
    ];
    if opts.rootless
        && let Some(n) = opts.resources.pids
    {
        let n = n.max(1) as u64;
        r.push(
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNproc)
                .hard(n)
                .soft(n)
                .build()?,
        );
    }
    Ok(r)
}

/// The runtime spec for `req`. See the module docs for the layout.
pub fn make_spec(req: &BuildRequest, opts: &SpecOptions) -> Result<Spec, SpecError> {
    if (opts.rootless && opts.user_namespace.is_none()) || opts.build_owner_on_host().is_none() {
        return Err(SpecError::RootlessMappings);
    }
    let env = req
        .environment_vars()
        .iter()
        .map(|(k, v)| match std::str::from_utf8(v) {
            Ok(v) => Ok(format!("{k}={v}")),
            Err(_) => Err(SpecError::NonUtf8Env { key: k.clone() }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let caps: oci_spec::runtime::Capabilities = [Capability::AuditWrite, Capability::Kill]
        .into_iter()
        .collect();
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(BUILD_UID)
                .gid(BUILD_GID)
                .build()?,
        )
        .args(req.command_args().to_vec())
        .env(env)
        .cwd(format!("/{}", req.working_dir()))
        .no_new_privileges(true)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .inheritable(oci_spec::runtime::Capabilities::new())
                .ambient(oci_spec::runtime::Capabilities::new())
                .build()?,
        )
        .rlimits(rlimits(opts)?)
        .build()?;

    let mut namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ];
    if !req.constraints().network_access {
        namespaces.push(LinuxNamespaceType::Network);
    }
    if opts.user_namespace.is_some() {
        namespaces.push(LinuxNamespaceType::User);
    }
    let namespaces = namespaces
        .into_iter()
        .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
        .collect::<Result<Vec<_>, _>>()?;

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(MASKED_PATHS.map(String::from).to_vec())
        .readonly_paths(READONLY_PATHS.map(String::from).to_vec())
        .seccomp(seccomp::filter()?);
    if let Some(maps) = &opts.user_namespace {
        linux = linux
            .uid_mappings(ids(&maps.uid)?)
            .gid_mappings(ids(&maps.gid)?);
    }
    if let Some(p) = &opts.cgroups_path {
        linux = linux.cgroups_path(p.clone());
    }
    let r = &opts.resources;
    // Rootless, the pids limit is an rlimit (see [`rlimits`]).
    let pids = r.pids.filter(|_| !opts.rootless);
    if r.memory_bytes.is_some() || pids.is_some() || r.cpus.is_some() {
        let mut res = LinuxResourcesBuilder::default();
        if let Some(mem) = r.memory_bytes {
            res = res.memory(LinuxMemoryBuilder::default().limit(mem).swap(mem).build()?);
        }
        if let Some(pids) = pids {
            res = res.pids(LinuxPidsBuilder::default().limit(pids).build()?);
        }
        if let Some(cpus) = r.cpus {
            let period = 100_000u64;
            res = res.cpu(
                LinuxCpuBuilder::default()
                    .period(period)
                    .quota((cpus * period as f64) as i64)
                    .build()?,
            );
        }
        linux = linux.resources(res.build()?);
    }

    let mounts = if opts.rootless {
        get_rootless_mounts()
    } else {
        get_default_mounts()
    };
    let mut mounts = runtime_mounts(mounts, opts)?;
    mounts.extend(build_mounts(req, opts)?);

    Ok(SpecBuilder::default()
        .version(OCI_VERSION)
        .process(process)
        .root(
            RootBuilder::default()
                .path(
                    opts.rootfs
                        .clone()
                        .unwrap_or_else(|| PathBuf::from(BundleLayout::ROOTFS)),
                )
                .readonly(true)
                .build()?,
        )
        .hostname("localhost")
        .mounts(mounts)
        .linux(linux.build()?)
        .build()?)
}

/// `config.json` for `spec`, deterministic: the capability sets (hash sets
/// in `oci-spec`) are written sorted, so one request always gives the same
/// bytes.
pub fn to_config_json(spec: &Spec) -> Result<String, serde_json::Error> {
    let mut v = serde_json::to_value(spec)?;
    if let Some(caps) = v
        .pointer_mut("/process/capabilities")
        .and_then(|c| c.as_object_mut())
    {
        for set in caps.values_mut() {
            if let Some(list) = set.as_array_mut() {
                list.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
    serde_json::to_string_pretty(&v)
}
