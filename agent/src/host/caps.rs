//! Applies a container process's privileges: the capability bounding set, user and groups,
//! permitted/effective/inheritable/ambient capabilities and no_new_privs. Called in the
//! container's init (and exec helper) just before exec; acts on the calling process only.

use std::io;

use crate::host::sys;
use crate::runtime::caps::CapSet;
use crate::runtime::user::Ids;

/// The highest capability number this kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Drops every capability not in `keep` from the bounding set. Needs CAP_SETPCAP, so it
/// runs before the user changes.
pub fn drop_bounding(keep: CapSet, last: u32) -> io::Result<()> {
    for cap in 0..=last {
        if !keep.has(cap) {
            match sys::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap)) {
                Ok(_) => {}
                // Capabilities newer than the running kernel: nothing to drop.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Switches to `ids` and sets the capability sets: for uid 0, permitted = effective =
/// `caps`; for another uid, permitted and effective stay empty (as Docker does), the
/// bounding set still limits what setuid binaries could regain (no_new_privs stops that).
/// Inheritable is `inheritable` (empty by default); ambient is cleared, then `ambient` raised.
pub fn switch_user(
    ids: &Ids,
    caps: CapSet,
    inheritable: CapSet,
    ambient: CapSet,
) -> io::Result<()> {
    switch_user_with(ids, caps, None, None, inheritable, ambient)
}

/// [`switch_user`] with explicit effective and permitted sets (OCI): kept across the uid
/// change with `PR_SET_KEEPCAPS`, then set exactly.
pub fn switch_user_with(
    ids: &Ids,
    caps: CapSet,
    effective: Option<CapSet>,
    permitted: Option<CapSet>,
    inheritable: CapSet,
    ambient: CapSet,
) -> io::Result<()> {
    let explicit = effective.is_some() || permitted.is_some();
    if explicit {
        sys::prctl(libc::PR_SET_KEEPCAPS, 1)?;
    }
    sys::set_ids(ids.uid, ids.gid, &ids.groups)?;
    if explicit {
        sys::prctl(libc::PR_SET_KEEPCAPS, 0)?;
    }
    let default = if ids.uid == 0 { caps.0 } else { 0 };
    let eff = effective.map_or(default, |c| c.0);
    let perm = permitted.map_or(default, |c| c.0) | eff | ambient.0;
    sys::capset(eff, perm, inheritable.0 | ambient.0)?;
    sys::prctl_ambient(libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0)?;
    for cap in 0..64u32 {
        if ambient.has(cap) {
            sys::prctl_ambient(
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                libc::c_ulong::from(cap),
            )?;
        }
    }
    Ok(())
}

/// Sets no_new_privs: exec can never grant more privileges (setuid bits, file caps).
pub fn set_no_new_privs() -> io::Result<()> {
    sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map(|_| ())
}

/// Makes the calling process non-dumpable: other processes (even root in the container
/// without CAP_SYS_PTRACE) cannot ptrace it or open its `/proc/<pid>/exe`, `fd/`, `mem`.
pub fn set_non_dumpable() -> io::Result<()> {
    sys::prctl(libc::PR_SET_DUMPABLE, 0).map(|_| ())
}
