//! The seccomp filter, as Nix's sandbox has it: everything is allowed but
//! making a file setuid or setgid (`chmod` family, EPERM) and extended
//! attributes (ENOTSUP), which a store path cannot carry anyway.
//! Syscalls unknown to the runtime's libseccomp (e.g. `fchmodat2` on older
//! ones) are skipped by runc; the ingestion drops those bits regardless.

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

const EPERM: u32 = 1;
const ENOTSUP: u32 = 95;
const S_ISUID: u64 = 0o4000;
const S_ISGID: u64 = 0o2000;

/// The architectures the filter applies to on this host.
fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        Vec::new()
    }
}

/// `names` fail with EPERM when mode argument `arg` has `bit` set.
fn deny_mode_bit(names: &[&str], arg: usize, bit: u64) -> Result<LinuxSyscall, OciSpecError> {
    LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(EPERM)
        .args(vec![
            LinuxSeccompArgBuilder::default()
                .index(arg)
                .value(bit)
                .value_two(bit)
                .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                .build()?,
        ])
        .build()
}

/// The filter for every build.
pub(crate) fn filter() -> Result<LinuxSeccomp, OciSpecError> {
    let mut syscalls = Vec::new();
    for bit in [S_ISUID, S_ISGID] {
        syscalls.push(deny_mode_bit(&["chmod", "fchmod"], 1, bit)?);
        syscalls.push(deny_mode_bit(&["fchmodat", "fchmodat2"], 2, bit)?);
    }
    syscalls.push(
        LinuxSyscallBuilder::default()
            .names(
                [
                    "setxattr",
                    "lsetxattr",
                    "fsetxattr",
                    "setxattrat",
                    "removexattr",
                    "lremovexattr",
                    "fremovexattr",
                    "removexattrat",
                ]
                .map(String::from)
                .to_vec(),
            )
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(ENOTSUP)
            .build()?,
    );
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
}
