//! The input closure of a derivation and the NAR hash of each path, read
//! from the local Nix store's database (`$NIX_STATE_DIR/db/db.sqlite`,
//! read-only) in one query: a second `build` over a closure already
//! imported spends its time here, and two `nix-store` processes
//! (`--query --requisites`, then `--query --hash`) cost more than the rest
//! together. Where the database cannot be read (another user's store, a
//! schema Nix changed), the caller falls back to `nix-store`; its errors
//! name the database and what it lacked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use rusqlite::{Connection, OpenFlags};
use tvix_oci_nix::StorePath;

/// Where Nix keeps the database of the store `nix-store` would use: its
/// `NIX_DB_DIR`, or `NIX_STATE_DIR/db`. `None` where `nix-store` would use
/// another store (`NIX_REMOTE`, a daemon or a chroot store): that one's
/// database is not this one.
fn db_path() -> Option<PathBuf> {
    if std::env::var_os("NIX_REMOTE").is_some_and(|r| !r.is_empty() && r != "local") {
        return None;
    }
    if let Some(dir) = std::env::var_os("NIX_DB_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("db.sqlite"));
    }
    let state = std::env::var_os("NIX_STATE_DIR").unwrap_or_else(|| "/nix/var/nix".into());
    Some(PathBuf::from(state).join("db/db.sqlite"))
}

/// Roots per query at most (SQLite's limit of variables is 32766).
const MAX_ROOTS: usize = 30_000;

/// The closure of `roots` (every path they refer to, transitively, and
/// themselves), each with its NAR hash as `nix-store --query --hash`
/// prints it (`sha256:<nix-base32>`). Fails when a root is not a valid
/// path of the store.
pub fn closure(roots: &BTreeSet<StorePath>) -> anyhow::Result<BTreeMap<StorePath, String>> {
    if roots.is_empty() {
        return Ok(BTreeMap::new());
    }
    if roots.len() > MAX_ROOTS {
        bail!("{} roots are more than one query takes", roots.len());
    }
    let Some(path) = db_path() else {
        bail!("NIX_REMOTE names another store than the local one");
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let db = Connection::open_with_flags(&path, flags)
        .with_context(|| format!("opening the Nix database {}", path.display()))?;
    // Nix may be writing: wait for its lock rather than fail at once.
    db.busy_timeout(std::time::Duration::from_secs(5))?;
    let values = vec!["(?)"; roots.len()].join(",");
    let sql = format!(
        "WITH RECURSIVE roots(path) AS (VALUES {values}),
         closure(id) AS (
           SELECT v.id FROM ValidPaths v JOIN roots r ON v.path = r.path
           UNION SELECT f.reference FROM Refs f JOIN closure c ON f.referrer = c.id)
         SELECT v.path, v.hash FROM ValidPaths v JOIN closure c ON v.id = c.id"
    );
    let mut stmt = db
        .prepare(&sql)
        .with_context(|| format!("querying the Nix database {}", path.display()))?;
    let absolute: Vec<String> = roots.iter().map(StorePath::absolute).collect();
    let rows = stmt.query_map(rusqlite::params_from_iter(absolute.iter()), |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (p, hash) = row?;
        let sp = StorePath::from_absolute(&p)
            .map_err(|e| anyhow!("the Nix database lists {p:?}, not a store path: {e}"))?;
        let hash = nix_hash(&hash)
            .ok_or_else(|| anyhow!("the Nix database lists {p} with the hash {hash:?}"))?;
        out.insert(sp, hash);
    }
    match roots.iter().find(|r| !out.contains_key(*r)) {
        Some(r) => Err(anyhow!("the Nix database does not list {r} as valid")),
        None => Ok(out),
    }
}

/// A NAR hash as the database holds it (`sha256:<hex>`) as
/// `nix-store --query --hash` prints it (`sha256:<nix-base32>`).
pub fn nix_hash(db: &str) -> Option<String> {
    let digest = db.strip_prefix("sha256:")?;
    let bytes = match digest.len() {
        64 => data_encoding::HEXLOWER_PERMISSIVE
            .decode(digest.as_bytes())
            .ok()?,
        52 => tvix_oci_nix::base32::decode(digest).ok()?,
        _ => return None,
    };
    (bytes.len() == 32).then(|| format!("sha256:{}", tvix_oci_nix::base32::encode(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::nix_hash;

    #[test]
    fn hashes_read_as_nix_store_prints_them() {
        // busybox's NAR hash, as the database holds it and as
        // `nix-store --query --hash` printed it here.
        let hex = "sha256:953af94ed7fcee4c7be70a8235fbabd89b689cd6e93b96991f814d0446d11b54";
        let printed = nix_hash(hex).unwrap();
        assert_eq!(
            printed,
            "sha256:0m0vs5308kc13ycrcfz9ssf6i6yqmgxkb0hawxxlrvpwsx7gjflm"
        );
        assert_eq!(nix_hash(&printed), Some(printed.clone()), "base32 kept");
        assert_eq!(nix_hash("sha1:abc"), None);
        assert_eq!(nix_hash("sha256:xyz"), None);
        assert_eq!(nix_hash(""), None);
    }
}
