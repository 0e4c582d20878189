//! The cluster's configuration as every replica must see it, and its
//! digest: what a peer's Hello is checked against.
//!
//! Two replicas that disagree on the peer list (an entry swapped, one
//! missing), the shard count or the cluster id would each run a protocol
//! that looks healthy and never commits, or worse, send one replica's
//! messages to another. So every peer Hello carries the digest of its
//! sender's [`Topology`], and the text of its peer list, so that a refusal
//! can say what differs in words.
//!
//! Pure: the peer list comes in as the strings the binary normalised from
//! `--peers` (never a resolved address: this layer has no `std::net`).

/// What every replica of one cluster must agree on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub cluster_id: u64,
    /// Every replica's advertised base address, in `--peers` order,
    /// normalised by the binary (`HOST:PORT`, a literal IP in its standard
    /// form, a host name in lower case).
    pub peers: Vec<String>,
    /// Shards of every replica (`--cores`).
    pub shards: usize,
}

/// Separates peer entries in a Hello's text (never inside an entry).
const PEER_SEPARATOR: char = ',';

impl Topology {
    pub fn replicas(&self) -> usize {
        self.peers.len()
    }

    /// FNV-1a (64 bits) over a tagged, length-prefixed encoding: cluster
    /// id, replica count, shard count, then each entry. Stable across
    /// builds and hosts (it goes on the wire), and two lists that differ
    /// anywhere, in order included, differ here but for a 2^-64 chance.
    /// Not a defence against a forger, which the cluster secret is for.
    pub fn digest(&self) -> u64 {
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        h.eat(b"epaxos-fast topology 1");
        h.eat(&self.cluster_id.to_le_bytes());
        h.eat(&(self.peers.len() as u64).to_le_bytes());
        h.eat(&(self.shards as u64).to_le_bytes());
        for p in &self.peers {
            h.eat(&(p.len() as u64).to_le_bytes());
            h.eat(p.as_bytes());
        }
        // 0 means "no digest" in a client's Hello.
        h.0.max(1)
    }

    /// The peer list as a Hello carries it: the entries, comma-separated.
    pub fn peers_text(&self) -> String {
        self.peers.join(&PEER_SEPARATOR.to_string())
    }

    /// The topology a peer's Hello describes: its peer list text, and the
    /// counts of its fixed part. (Its cluster id is this replica's: a frame
    /// of another cluster never gets this far.)
    pub fn from_hello(cluster_id: u64, peers_text: &str, shards: usize) -> Topology {
        let peers = if peers_text.is_empty() {
            Vec::new()
        } else {
            peers_text
                .split(PEER_SEPARATOR)
                .map(str::to_string)
                .collect()
        };
        Topology {
            cluster_id,
            peers,
            shards,
        }
    }

    /// One line saying how `theirs` (what `who` runs) differs from this
    /// one: both counts, both peer lists, and the first entry that differs.
    pub fn describe_difference(&self, who: &str, theirs: &Topology) -> String {
        let mut first = String::new();
        let n = self.peers.len().max(theirs.peers.len());
        if let Some(i) = (0..n).find(|&i| self.peers.get(i) != theirs.peers.get(i)) {
            let show = |p: Option<&String>| p.map_or("nothing".to_string(), |p| format!("{p:?}"));
            first = format!(
                "; first difference at entry {i}: {} here, {} at {who}",
                show(self.peers.get(i)),
                show(theirs.peers.get(i))
            );
        }
        format!(
            "this replica runs {} replicas, {} shards, --peers {}; {who} runs {} replicas, \
             {} shards, --peers {}{first}",
            self.replicas(),
            self.shards,
            self.peers_text(),
            theirs.replicas(),
            theirs.shards,
            theirs.peers_text(),
        )
    }
}

struct Fnv(u64);

impl Fnv {
    fn eat(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(peers: &[&str], shards: usize) -> Topology {
        Topology {
            cluster_id: 7,
            peers: peers.iter().map(|p| p.to_string()).collect(),
            shards,
        }
    }

    #[test]
    fn the_digest_is_stable_and_covers_every_part() {
        let base = topo(&["a:1", "b:1", "c:1"], 2);
        assert_eq!(base.digest(), base.clone().digest());
        // A fixed value: the digest goes on the wire, so it must not change
        // between builds without a wire version bump.
        assert_eq!(base.digest(), 0x1c31_eb19_5a4b_e984);
        let others = [
            topo(&["b:1", "a:1", "c:1"], 2), // two entries swapped
            topo(&["a:1", "b:1", "c:1"], 1), // shard count
            topo(&["a:1", "b:1"], 2),        // an entry missing
            topo(&["a:1", "b:1", "c:2"], 2), // a port
            topo(&["a:1b:1", "", "c:1"], 2), // same bytes, other entries
            Topology {
                cluster_id: 8,
                ..base.clone()
            },
        ];
        for o in &others {
            assert_ne!(o.digest(), base.digest(), "{o:?}");
        }
        assert_ne!(base.digest(), 0, "0 means no digest");
    }

    #[test]
    fn a_hello_text_gives_back_the_list() {
        let t = topo(&["a:1", "[::1]:7000", "c:1"], 3);
        let back = Topology::from_hello(7, &t.peers_text(), 3);
        assert_eq!(back, t);
        assert_eq!(back.digest(), t.digest());
        assert!(Topology::from_hello(7, "", 1).peers.is_empty());
    }

    #[test]
    fn a_difference_names_both_lists_and_the_first_entry() {
        let mine = topo(&["a:1", "b:1", "c:1"], 1);
        let theirs = topo(&["b:1", "a:1", "c:1"], 2);
        let d = mine.describe_difference("replica 2", &theirs);
        assert!(
            d.contains("3 replicas, 1 shards, --peers a:1,b:1,c:1"),
            "{d}"
        );
        assert!(
            d.contains("replica 2 runs 3 replicas, 2 shards, --peers b:1,a:1,c:1"),
            "{d}"
        );
        assert!(
            d.contains("entry 0: \"a:1\" here, \"b:1\" at replica 2"),
            "{d}"
        );
        let shorter = topo(&["a:1"], 1);
        let d = mine.describe_difference("replica 1", &shorter);
        assert!(
            d.contains("entry 1: \"b:1\" here, nothing at replica 1"),
            "{d}"
        );
    }
}
