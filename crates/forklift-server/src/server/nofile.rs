//! The open-files limit and the connection cap. Every connection holds a file descriptor,
//! and so do the database pool, SQLite's files and the listener. Were the cap above the
//! limit, a flood of connections would take the descriptors the rest of the process needs:
//! accept would fail with EMFILE, and so would opening a database connection. So the
//! binary raises the soft limit as far as the cap needs (Go's runtime does the same at
//! start-up), and where the hard limit stops it, lowers the cap to fit.

/// Descriptors kept for everything but client connections: the database pool (20 on
/// PostgreSQL; on SQLite a writer and readers, each with the WAL and shared-memory files),
/// the listener, the runtime's own, and the logs, with room to spare.
pub const RESERVED: u64 = 256;

/// The connection cap to use: `max_connections`, or less when the open-files limit cannot
/// be raised to hold it (with a warning that says what to change).
pub fn fit_connections(max_connections: usize) -> usize {
    let wanted = max_connections as u64 + RESERVED;
    let Some(limit) = raise_soft_limit(wanted) else {
        return max_connections;
    };
    let fitted = fitted_cap(max_connections, limit);
    if fitted < max_connections {
        tracing::warn!(
            open_files_limit = limit,
            max_connections = fitted,
            asked = max_connections,
            "the open-files limit holds fewer connections than --max-connections; raise it (ulimit -n, LimitNOFILE=) to serve more"
        );
    }
    fitted
}

/// The cap that leaves [`RESERVED`] descriptors free under `limit` (and at least half the
/// limit when it is tiny).
fn fitted_cap(max_connections: usize, limit: u64) -> usize {
    let room = limit.saturating_sub(RESERVED).max(limit / 2);
    max_connections.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// Raises the soft RLIMIT_NOFILE to `wanted` (at most the hard limit) and returns the soft
/// limit now in force; `None` when it cannot be read.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every Unix
fn raise_soft_limit(wanted: u64) -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct it is given, which we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let wanted = wanted as libc::rlim_t;
    if limit.rlim_cur >= wanted {
        return Some(limit.rlim_cur as u64);
    }
    let raised = libc::rlimit {
        rlim_cur: wanted.min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        Some(raised.rlim_cur as u64)
    } else {
        Some(limit.rlim_cur as u64)
    }
}

#[cfg(not(unix))]
fn raise_soft_limit(_wanted: u64) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_reserved_descriptors_under_the_limit() {
        assert_eq!(fitted_cap(10_000, 1_024), 768);
        assert_eq!(fitted_cap(10_000, 20_000), 10_000);
        assert_eq!(fitted_cap(10_000, 10_256), 10_000);
        assert_eq!(
            fitted_cap(10_000, 300),
            150,
            "a tiny limit keeps half for connections"
        );
    }

    #[test]
    fn the_soft_limit_covers_a_small_cap() {
        // The test process's limit holds 100 connections plus the reserve on any sane host.
        assert_eq!(fit_connections(100), 100);
    }
}
