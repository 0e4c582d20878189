//! Feeds arbitrary bytes to every decoder a replica runs on untrusted input:
//! as a byte stream cut into frames (checksums checked), and, past the
//! checksum, as one body of the kind the first byte names.
#![no_main]

use epaxos_fast::wire::{decode_body, decode_untrusted, Kind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    decode_untrusted(data, 1, 5);
    if let Some((&code, body)) = data.split_first() {
        if let Some(kind) = Kind::from_code(code) {
            decode_body(kind, bytes::Bytes::copy_from_slice(body), 5);
        }
    }
});
