//! Bearer tokens for the runtime's control surfaces (the console and the
//! HTTP API): made from the OS's randomness, kept in files only their owner
//! can read, and compared in constant time.

use std::path::Path;

use dspex_core::{Error, ErrorKind, Result};

/// Tokens shorter than this are refused.
pub const MIN_LEN: usize = 8;

/// A new random token: 48 hex digits (192 bits from `/dev/urandom`).
pub fn generate() -> String {
    let mut bytes = [0u8; 24];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| {
        use std::io::Read;
        f.read_exact(&mut bytes)
    });
    if read.is_err() {
        for b in &mut bytes {
            *b = fastrand::u8(..);
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `given` is `expected`, in a time that does not depend on how
/// much of a wrong guess is right.
pub fn matches(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Failed authentications per peer, so a token cannot be guessed at line
/// speed: a peer's first [`AuthThrottle::FREE_FAILURES`] failures cost
/// nothing; after that each further attempt must wait, the wait doubling
/// with every failure (from 250 ms up to a minute), and an attempt made
/// during the wait is refused unchecked. A success forgets the peer; so
/// does ten minutes' quiet.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    peers: parking_lot::Mutex<std::collections::HashMap<String, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: std::time::Instant,
    until: std::time::Instant,
}

impl AuthThrottle {
    /// Failures a peer may make before it has to wait.
    pub const FREE_FAILURES: u32 = 5;
    /// Peers kept at most (the quietest go first).
    const MAX_PEERS: usize = 4096;
    const FORGET_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

    /// An empty throttle.
    pub fn new() -> AuthThrottle {
        AuthThrottle::default()
    }

    /// Whether `peer` may try now; `Err(wait)` while it must wait.
    pub fn check(&self, peer: &str) -> std::result::Result<(), std::time::Duration> {
        let now = std::time::Instant::now();
        match self.peers.lock().get(peer) {
            Some(f) if f.until > now => Err(f.until - now),
            _ => Ok(()),
        }
    }

    /// `peer` gave a wrong token (or none where one is needed).
    pub fn failed(&self, peer: &str) {
        let now = std::time::Instant::now();
        let mut peers = self.peers.lock();
        if peers.len() >= Self::MAX_PEERS && !peers.contains_key(peer) {
            peers.retain(|_, f| now.duration_since(f.last) < Self::FORGET_AFTER);
            if peers.len() >= Self::MAX_PEERS {
                let quietest = peers.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| k.clone());
                if let Some(k) = quietest {
                    peers.remove(&k);
                }
            }
        }
        let f = peers.entry(peer.to_string()).or_insert(Failures { count: 0, last: now, until: now });
        if now.duration_since(f.last) >= Self::FORGET_AFTER {
            f.count = 0;
        }
        f.count += 1;
        f.last = now;
        if f.count > Self::FREE_FAILURES {
            let doublings = (f.count - Self::FREE_FAILURES - 1).min(8);
            let wait = std::time::Duration::from_millis(250 << doublings).min(std::time::Duration::from_secs(60));
            f.until = now + wait;
        }
    }

    /// `peer` authenticated: its failures are forgotten.
    pub fn succeeded(&self, peer: &str) {
        let mut peers = self.peers.lock();
        if !peers.is_empty() {
            peers.remove(peer);
        }
    }
}

/// Write `text` to a new file at `path` with mode 0600 (an existing file is
/// replaced).
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| Error::new(ErrorKind::Io, format!("cannot write {}: {e}", path.display()));
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)
}

/// The token kept in `path`, or a new one written there (mode 0600) when
/// the file does not exist. A file others may read, or a token shorter than
/// [`MIN_LEN`], is refused.
pub fn read_or_create(path: &Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("token file {} may be read by others: chmod 600 it", path.display()),
                ));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::new(ErrorKind::Config, format!("cannot read {}: {e}", path.display())))?;
            let token = text.trim().to_string();
            if token.len() < MIN_LEN {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("the token in {} must have at least {MIN_LEN} characters", path.display()),
                ));
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = generate();
            write_private(path, &token)?;
            Ok(token)
        }
        Err(e) => Err(Error::new(ErrorKind::Config, format!("cannot read {}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_compared_exactly_and_kept_private() {
        let (a, b) = (generate(), generate());
        assert_eq!(a.len(), 48);
        assert_ne!(a, b);
        assert!(matches(&a, &a.clone()));
        assert!(!matches(&a, &b) && !matches(&a, &a[..47]) && !matches("", &a));

        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("dspex-token-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("http.token");
        let made = read_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read_or_create(&path).unwrap(), made, "the same token is read back");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_or_create(&path).unwrap_err().message().contains("chmod 600"));
        write_private(&path, "short\n").unwrap();
        assert!(read_or_create(&path).unwrap_err().message().contains("at least 8"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_authentications_make_a_peer_wait_longer_and_longer() {
        let t = AuthThrottle::new();
        for _ in 0..AuthThrottle::FREE_FAILURES {
            assert_eq!(t.check("a"), Ok(()));
            t.failed("a");
        }
        assert_eq!(t.check("a"), Ok(()), "the free failures cost nothing");
        t.failed("a");
        let first = t.check("a").unwrap_err();
        assert!(first > std::time::Duration::from_millis(200) && first <= std::time::Duration::from_millis(250));
        t.failed("a");
        let second = t.check("a").unwrap_err();
        assert!(second > std::time::Duration::from_millis(450), "{second:?}");
        assert_eq!(t.check("b"), Ok(()), "other peers are not affected");
        t.succeeded("a");
        assert_eq!(t.check("a"), Ok(()));
        for _ in 0..40 {
            t.failed("c");
        }
        assert!(t.check("c").unwrap_err() <= std::time::Duration::from_secs(60), "capped at a minute");
    }

    #[test]
    fn the_throttle_keeps_a_bounded_number_of_peers() {
        let t = AuthThrottle::new();
        for i in 0..AuthThrottle::MAX_PEERS + 10 {
            t.failed(&format!("peer-{i}"));
        }
        assert!(t.peers.lock().len() <= AuthThrottle::MAX_PEERS);
    }
}
