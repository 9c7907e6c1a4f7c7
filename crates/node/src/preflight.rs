//! What `check-config` finds that only a start would find otherwise: the
//! ports this account may listen on, addresses this host has, the folders
//! the node must write. (A configuration that passed `check-config` and
//! then failed to start, exit 78, was what check-config is run to avoid.)

use std::net::{SocketAddr, TcpListener};
use std::path::Path;

use anyhow::{anyhow, Result};

use crate::config::Config;

/// Every problem found, in words naming the key; empty when none.
pub fn problems(config: &Config) -> Vec<String> {
    let mut found = Vec::new();
    let http = SocketAddr::new(config.http.bind, config.http.port);
    let mut listens = vec![("dicom", config.listen_addr())];
    if config.http.enabled {
        listens.push(("http", http));
    }
    for (section, addr) in listens {
        if let Err(e) = may_listen(addr) {
            found.push(format!("{section}.bind/{section}.port {addr}: {e}"));
        }
    }
    let data_dir = &config.node.data_dir;
    if let Err(e) = writable_or_creatable(data_dir) {
        found.push(format!("node.data_dir {}: {e}", data_dir.display()));
    }
    // What a first run as root left inside (only the top folder chowned
    // after): the start failed on the lock, or served refusing everything.
    let database = pneumo_store::database_file(data_dir, config.database_url());
    let mut inside: Vec<std::path::PathBuf> = ["instances", "spool", "pneumo-node.lock"]
        .iter()
        .map(|name| data_dir.join(name))
        .collect();
    if let Some(db) = &database {
        for suffix in ["", "-wal", "-shm", ".pneumo-node.lock"] {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            inside.push(name.into());
        }
    }
    for path in inside.iter().filter(|p| p.exists()) {
        if let Err(e) = writable(path) {
            found.push(format!("node.data_dir: {}: {e}", path.display()));
        }
    }
    if config.database_url().is_some() {
        if let Some(folder) = database
            .as_deref()
            .and_then(Path::parent)
            .filter(|p| !p.as_os_str().is_empty())
        {
            if let Err(e) = writable(folder) {
                found.push(format!(
                    "database.url: the database's folder {}: {e}",
                    folder.display()
                ));
            }
        }
    }
    found
}

/// What `check-config` says without refusing: destinations whose host
/// name this machine cannot resolve now (a typo, or a name the site's DNS
/// does not know: every delivery there fails until it does). Not a
/// refusal: the DNS may answer later, or only on the node's network.
pub fn warnings(config: &Config) -> Vec<String> {
    use std::net::ToSocketAddrs;
    use std::os::unix::fs::MetadataExt;
    // Checked as root for a service that runs as its own account: fine,
    // but `serve` as root there is refused; said, not refused.
    // SAFETY: reads the process's effective user ID; no memory involved.
    let root = unsafe { libc::geteuid() } == 0;
    let owner = std::fs::metadata(&config.node.data_dir)
        .map(|m| m.uid())
        .ok();
    let as_root = owner.filter(|&o| root && o != 0).map(|owner| {
        format!(
            "node.data_dir {} is owned by user ID {owner} and this check runs as root: `serve` \
             refuses to run as root there; start the node as that account",
            config.node.data_dir.display()
        )
    });
    let destinations = config.destinations.iter().map(|d| {
        let what = format!("destination `{}`", d.name);
        (what, &d.host, d.port, "every delivery there")
    });
    let requesters = config.dicom.commitment_requesters.iter().map(|r| {
        let what = format!("commitment requester `{}`", r.ae_title);
        (what, &r.host, r.port, "every commitment result for it")
    });
    destinations
        .chain(requesters)
        .filter_map(
            // "[::1]" is how an IPv6 host may be written; it resolves bare.
            |(what, host, port, fails)| match (host.trim_matches(['[', ']']), port)
                .to_socket_addrs()
            {
                Ok(addrs) if addrs.len() > 0 => None,
                Ok(_) => Some(format!("{what}: host `{host}` resolves to no address")),
                Err(e) => Some(format!(
                    "{what}: host `{host}` does not resolve here ({e}): {fails} fails until it does"
                )),
            },
        )
        .chain(as_root)
        .collect()
}

/// Whether this process could listen on `addr`. Taken already is fine (the
/// node itself, running while its next configuration is checked).
fn may_listen(addr: SocketAddr) -> Result<()> {
    match TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(anyhow!(
            "this account may not listen there (a port below 1024 needs the \
             CAP_NET_BIND_SERVICE capability: the unit's AmbientCapabilities)"
        )),
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
            Err(anyhow!("no interface of this host has that address"))
        }
        Err(e) => Err(anyhow!("cannot listen there: {e}")),
    }
}

/// The data directory must be writable by this account, or, not made yet,
/// its parent (which must exist: the node makes the directory, never its
/// parents).
fn writable_or_creatable(dir: &Path) -> Result<()> {
    if dir.exists() {
        return writable(dir);
    }
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) if parent.is_dir() => writable(parent).map_err(|e| {
            anyhow!(
                "does not exist, and it cannot be made in {}: {e}",
                parent.display()
            )
        }),
        Some(parent) => Err(anyhow!(
            "does not exist, nor the folder {} it would be made in",
            parent.display()
        )),
        None => Ok(()),
    }
}

/// A folder this account can write into, or a file it can write.
fn writable(path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let mode = if path.is_dir() {
        libc::W_OK | libc::X_OK
    } else if path.is_file() {
        libc::R_OK | libc::W_OK
    } else if !path.exists() {
        return Err(anyhow!("does not exist"));
    } else {
        return Err(anyhow!("is not a folder"));
    };
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // access(2) asks with this process's real account: the one the unit runs.
    if unsafe { libc::access(c.as_ptr(), mode) } != 0 {
        let e = std::io::Error::last_os_error();
        // (by number: $USER is the caller's, not the account's, under sudo)
        return Err(anyhow!(
            "this account (uid {}) cannot write it: {e}",
            unsafe { libc::getuid() }
        ));
    }
    Ok(())
}
