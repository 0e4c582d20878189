//! What the binary checks of `--peers` and `--listen` before anything
//! starts, the names the configuration digest covers, and the process's
//! incarnation.
//!
//! Replica i uses ports PORT..PORT+cores-1 of its host (shard s on
//! PORT + s). Two entries that name one address, or whose ranges meet on
//! one host, would have two replicas bind one port (the second fails late,
//! or worse, each reaches the other under the wrong id): refused at start.

use std::net::SocketAddr;

/// A `--peers` entry as the configuration digest covers it: trimmed; a
/// literal address in its standard form (`127.0.0.1:7000`, `[::1]:7000`),
/// anything else (a host name) in lower case. Every replica must be given
/// the same entries: `h0:7000` on one and `10.0.0.1:7000` on another are a
/// mismatch, even if they name one host.
pub fn normalise(entry: &str) -> String {
    let entry = entry.trim();
    match entry.parse::<SocketAddr>() {
        Ok(a) => a.to_string(),
        Err(_) => entry.to_ascii_lowercase(),
    }
}

/// The ports replica `addr` uses with `cores` shards, first and last.
fn range(addr: SocketAddr, cores: usize) -> (usize, usize) {
    let first = usize::from(addr.port());
    (first, first + cores - 1)
}

fn overlap(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// Refuses a peer list with a repeated entry or two port ranges that meet
/// on one address, and a `--listen` whose range meets another replica's on
/// its host (the same address, or a wildcard and a loopback one). `names`
/// are the entries as normalised, `peers` as resolved; `id` is this
/// replica's index.
pub fn check(
    names: &[String],
    peers: &[SocketAddr],
    id: usize,
    listen: SocketAddr,
    cores: usize,
) -> Result<(), String> {
    let ports = |r: (usize, usize)| format!("ports {}-{}", r.0, r.1);
    for j in 0..peers.len() {
        for i in 0..j {
            if names[i] == names[j] || peers[i] == peers[j] {
                return Err(format!(
                    "--peers entries {i} ({}) and {j} ({}) are the same address {}: each \
                     replica needs its own",
                    names[i], names[j], peers[i]
                ));
            }
            let (ri, rj) = (range(peers[i], cores), range(peers[j], cores));
            if peers[i].ip() == peers[j].ip() && overlap(ri, rj) {
                return Err(format!(
                    "--peers entries {i} ({}) and {j} ({}) overlap: with --cores {cores}, \
                     replica {i} uses {} and replica {j} uses {} on {}",
                    names[i],
                    names[j],
                    ports(ri),
                    ports(rj),
                    peers[i].ip()
                ));
            }
        }
    }
    let mine = range(listen, cores);
    for (j, p) in peers.iter().enumerate().filter(|&(j, _)| j != id) {
        let same_host =
            p.ip() == listen.ip() || (listen.ip().is_unspecified() && p.ip().is_loopback());
        if same_host && overlap(mine, range(*p, cores)) {
            return Err(format!(
                "--listen {listen} overlaps replica {j} ({}): with --cores {cores}, this \
                 replica would bind {} and replica {j} uses {}",
                names[j],
                ports(mine),
                ports(range(*p, cores))
            ));
        }
    }
    Ok(())
}

/// Refuses a `--resp` range that meets `--listen`'s, or another replica's
/// on the same host: both would be bound by this process or its peers.
pub fn check_resp(
    names: &[String],
    peers: &[SocketAddr],
    id: usize,
    listen: SocketAddr,
    resp: SocketAddr,
    cores: usize,
) -> Result<(), String> {
    let ports = |r: (usize, usize)| format!("ports {}-{}", r.0, r.1);
    // A wildcard address binds the port on every address of the host.
    let same_host = |a: SocketAddr, b: SocketAddr| {
        a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
    };
    let mine = range(resp, cores);
    if same_host(resp, listen) && overlap(mine, range(listen, cores)) {
        return Err(format!(
            "--resp {resp} overlaps --listen {listen}: with --cores {cores}, RESP would bind \
             {} and the binary protocol {}",
            ports(mine),
            ports(range(listen, cores))
        ));
    }
    for (j, p) in peers.iter().enumerate().filter(|&(j, _)| j != id) {
        if same_host(resp, *p) && overlap(mine, range(*p, cores)) {
            return Err(format!(
                "--resp {resp} overlaps replica {j} ({}): with --cores {cores}, RESP would \
                 bind {} and replica {j} uses {}",
                names[j],
                ports(mine),
                ports(range(*p, cores))
            ));
        }
    }
    Ok(())
}

/// 64 random bits for this process (`NodeConfig::incarnation`): from the
/// kernel's generator, else from the clock and the pid.
pub fn incarnation() -> u64 {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    let x = match read {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            t ^ (u64::from(std::process::id()) << 40)
        }
    };
    x.max(1) // 0 is what a client sends
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> (Vec<String>, Vec<SocketAddr>) {
        let names = entries.iter().map(|e| normalise(e)).collect();
        let addrs = entries.iter().map(|e| e.trim().parse().unwrap()).collect();
        (names, addrs)
    }

    fn checked(
        entries: &[&str],
        id: usize,
        listen: Option<&str>,
        cores: usize,
    ) -> Result<(), String> {
        let (names, peers) = list(entries);
        let listen = listen.map_or(peers[id], |l| l.parse().unwrap());
        check(&names, &peers, id, listen, cores)
    }

    #[test]
    fn entries_are_normalised() {
        assert_eq!(normalise(" 127.0.0.1:7000 "), "127.0.0.1:7000");
        assert_eq!(normalise("[0:0::1]:7000"), "[::1]:7000");
        assert_eq!(normalise("Host-A.Example:7000"), "host-a.example:7000");
    }

    #[test]
    fn a_good_list_passes() {
        let l = ["127.0.0.1:7000", "127.0.0.1:7002", "127.0.0.2:7000"];
        assert_eq!(checked(&l, 1, None, 2), Ok(()));
        // Every host on the same port, bound on the wildcard address.
        let l = ["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"];
        assert_eq!(checked(&l, 0, Some("0.0.0.0:7000"), 8), Ok(()));
    }

    #[test]
    fn a_repeated_entry_is_refused() {
        let l = ["127.0.0.1:7000", "127.0.0.1:7010", " 127.0.0.1:7000"];
        let e = checked(&l, 0, None, 1).unwrap_err();
        assert!(
            e.contains("entries 0 (127.0.0.1:7000) and 2 (127.0.0.1:7000) are the same"),
            "{e}"
        );
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let l = ["127.0.0.1:7800", "127.0.0.1:7801", "127.0.0.1:7900"];
        let e = checked(&l, 2, None, 2).unwrap_err();
        assert!(
            e.contains("entries 0 (127.0.0.1:7800) and 1 (127.0.0.1:7801) overlap"),
            "{e}"
        );
        assert!(
            e.contains("replica 0 uses ports 7800-7801 and replica 1 uses ports 7801-7802"),
            "{e}"
        );
        // The same ports on another host are fine.
        let l = ["127.0.0.1:7800", "127.0.0.2:7801", "127.0.0.1:7900"];
        assert_eq!(checked(&l, 2, None, 2), Ok(()));
    }

    #[test]
    fn a_listen_range_over_another_replica_is_refused() {
        let l = ["127.0.0.1:7000", "127.0.0.1:7010", "127.0.0.1:7020"];
        let e = checked(&l, 0, Some("127.0.0.1:7009"), 2).unwrap_err();
        assert!(
            e.contains("--listen 127.0.0.1:7009 overlaps replica 1 (127.0.0.1:7010)"),
            "{e}"
        );
        let e = checked(&l, 0, Some("0.0.0.0:7020"), 1).unwrap_err();
        assert!(e.contains("overlaps replica 2"), "{e}");
        assert_eq!(checked(&l, 0, Some("127.0.0.1:7100"), 2), Ok(()));
    }

    #[test]
    fn a_resp_range_over_a_binary_one_is_refused() {
        let (names, peers) = list(&["127.0.0.1:7000", "127.0.0.1:7010", "127.0.0.1:7020"]);
        let resp = |r: &str| r.parse::<SocketAddr>().unwrap();
        let e = check_resp(&names, &peers, 0, peers[0], resp("127.0.0.1:7001"), 2).unwrap_err();
        assert!(
            e.contains("--resp 127.0.0.1:7001 overlaps --listen 127.0.0.1:7000"),
            "{e}"
        );
        let e = check_resp(&names, &peers, 0, peers[0], resp("0.0.0.0:7019"), 2).unwrap_err();
        assert!(e.contains("overlaps replica 2"), "{e}");
        assert_eq!(
            check_resp(&names, &peers, 0, peers[0], resp("127.0.0.1:6379"), 2),
            Ok(())
        );
    }

    #[test]
    fn incarnations_differ() {
        assert_ne!(incarnation(), incarnation());
        assert_ne!(incarnation(), 0);
    }
}
