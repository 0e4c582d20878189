//! Fixed-layout wire records.
//!
//! Everything that crosses a process boundary is laid out here as `#[repr(C)]`
//! structs with explicit little-endian integers, read in place from a received
//! buffer through zerocopy:
//! - commands and batches are in [`crate::command`] (below the protocol,
//!   which keeps batches in that byte format; `wire` carries them as bodies);
//! - [`frame`]: the header in front of every frame, and frame splitting;
//! - [`peer`]: the protocol messages between replicas;
//! - [`client`]: the handshake, client requests and responses, admin.

pub mod client;
pub mod frame;
pub mod inbound;
pub mod peer;

pub use frame::{Frame, FrameEncoder, FrameError, FrameReader, Kind, ReadBuffer};
pub use inbound::{Inbound, InputBudget};

/// Runs every decoder this crate has over untrusted bytes, as a replica
/// would meet them: split into frames, each body decoded as its kind.
/// Returns how many frames decoded. It must never panic, whatever the input:
/// the randomized test and the `cargo fuzz` target (`fuzz/`) hold it to that.
pub fn decode_untrusted(bytes: &[u8], cluster_id: u64, replicas: usize) -> usize {
    let reader = FrameReader::new(cluster_id);
    let mut buf = bytes::BytesMut::from(bytes);
    let mut decoded = 0;
    while let Ok(Some(frame)) = reader.next(&mut buf) {
        decoded += usize::from(decode_body(frame.kind, frame.body, replicas));
    }
    let _ = reader.at_end(&buf);
    decoded
}

/// Decodes one body as `kind` (its checksum already passed, or bypassed by
/// a fuzzer); whether it is valid.
pub fn decode_body(kind: Kind, body: bytes::Bytes, replicas: usize) -> bool {
    match kind {
        k if k.is_peer_message() => peer::decode(k, &body, replicas).is_ok(),
        Kind::Hello | Kind::HelloOk => client::decode_hello(kind, &body).is_ok(),
        Kind::Response => client::decode_response(&body).is_ok(),
        Kind::Request => crate::command::Batch::parse(body).is_ok(),
        Kind::AdminInfo => {
            <client::AdminInfo as zerocopy::FromBytes>::read_from_bytes(&body).is_ok()
        }
        // Taken as bytes: a MAC checked by `node::auth`, a password.
        Kind::Refused | Kind::Admin | Kind::HelloProof | Kind::Auth => true,
        _ => unreachable!("peer kinds matched above"),
    }
}

#[cfg(test)]
mod untrusted_tests {
    use super::*;
    use crate::rng::Rng;

    /// Valid frames of every kind, to mutate.
    fn corpus() -> Vec<u8> {
        let enc = FrameEncoder {
            cluster_id: 3,
            sender: 1,
            shard: 0,
        };
        let mut buf = bytes::BytesMut::new();
        let mut b = crate::command::BatchBuilder::new();
        b.push(&crate::command::CommandRef {
            client: 1,
            request: 2,
            first_outstanding: 1,
            op: crate::command::Op::Put,
            key: b"k",
            value: b"v",
        });
        let batch = b.finish();
        enc.frame(&mut buf, Kind::Request, |x| {
            x.extend_from_slice(batch.bytes())
        });
        let id = crate::protocol::InstanceId::new(crate::protocol::ReplicaId(1), 4);
        let msg = crate::protocol::Message::PreAccept(crate::protocol::PreAccept {
            id,
            ballot: crate::protocol::Ballot::initial(id.replica),
            attrs: Default::default(),
            batch,
        });
        peer::encode(&enc, &mut buf, &msg);
        let hello = client::HelloBody {
            role: client::Role::Client as u8,
            ..Default::default()
        };
        enc.frame(&mut buf, Kind::Hello, |x| {
            x.extend_from_slice(zerocopy::IntoBytes::as_bytes(&hello))
        });
        buf.to_vec()
    }

    /// Where a body would start if `bytes` is one whole frame.
    fn rng_offset(bytes: &[u8]) -> usize {
        frame::FRAME_HEADER_BYTES.min(bytes.len())
    }

    /// Random bytes, and valid frames with random bytes changed, never panic
    /// a decoder. Seeded: a failure names the seed that replays it.
    #[test]
    fn arbitrary_bytes_never_panic_a_decoder() {
        let valid = corpus();
        assert_eq!(decode_untrusted(&valid, 3, 3), 3);
        for seed in 0..3_000u64 {
            let mut rng = Rng::new(seed);
            let mut input = if seed % 3 == 0 {
                (0..rng.below(400)).map(|_| rng.below(256) as u8).collect()
            } else {
                valid.clone()
            };
            for _ in 0..=rng.below(4) {
                if input.is_empty() {
                    break;
                }
                let at = rng.below(input.len() as u64) as usize;
                input[at] = rng.below(256) as u8;
            }
            if seed % 5 == 0 {
                let keep = rng.below(input.len() as u64 + 1) as usize;
                input.truncate(keep);
            }
            // Bodies straight to their decoder too: past the checksum,
            // which stops nearly every mutated frame above.
            let kind = Kind::from_code(rng.below(40) as u8).unwrap_or(Kind::PreAccept);
            let body = bytes::Bytes::from(input.clone());
            let result = std::panic::catch_unwind(|| {
                decode_untrusted(&input, 3, 3);
                decode_body(kind, body.slice(rng_offset(&body)..), 3);
            });
            assert!(
                result.is_ok(),
                "seed {seed} panicked a decoder (the test is seeded: re-run it)"
            );
        }
    }
}
