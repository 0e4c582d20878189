//! Writing RESP replies into a buffer the caller owns: RESP2 by default,
//! RESP3 once a client said `HELLO 3` (maps as `%`, null as `_`; RESP2
//! writes a map as a flat array and null as `$-1`).
//!
//! Pure: no IO; numbers are formatted without allocating.

use bytes::{BufMut, BytesMut};

/// Which protocol a connection speaks, and so how replies are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Encoder {
    pub resp3: bool,
}

/// Writes `n` in decimal.
pub fn put_int(buf: &mut BytesMut, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut m = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    if n < 0 {
        buf.put_u8(b'-');
    }
    buf.put_slice(&digits[at..]);
}

fn line(buf: &mut BytesMut, tag: u8, n: i64) {
    buf.put_u8(tag);
    put_int(buf, n);
    buf.put_slice(b"\r\n");
}

/// Text of a simple string or error: a CR or LF would end the line early.
fn put_text(buf: &mut BytesMut, text: &str) {
    for b in text.bytes() {
        buf.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
    }
}

impl Encoder {
    /// `+text`.
    pub fn simple(&self, buf: &mut BytesMut, text: &str) {
        buf.put_u8(b'+');
        put_text(buf, text);
        buf.put_slice(b"\r\n");
    }

    pub fn ok(&self, buf: &mut BytesMut) {
        buf.put_slice(b"+OK\r\n");
    }

    /// `-text`: the text starts with its code (`ERR`, `CROSSSLOT`, ...).
    pub fn error(&self, buf: &mut BytesMut, text: &str) {
        buf.put_u8(b'-');
        put_text(buf, text);
        buf.put_slice(b"\r\n");
    }

    pub fn integer(&self, buf: &mut BytesMut, n: i64) {
        line(buf, b':', n);
    }

    pub fn bulk(&self, buf: &mut BytesMut, bytes: &[u8]) {
        line(buf, b'$', bytes.len() as i64);
        buf.put_slice(bytes);
        buf.put_slice(b"\r\n");
    }

    pub fn null(&self, buf: &mut BytesMut) {
        buf.put_slice(if self.resp3 { b"_\r\n" } else { b"$-1\r\n" });
    }

    pub fn array(&self, buf: &mut BytesMut, n: usize) {
        line(buf, b'*', n as i64);
    }

    /// A map of `n` pairs; its 2n elements follow.
    pub fn map(&self, buf: &mut BytesMut, n: usize) {
        if self.resp3 {
            line(buf, b'%', n as i64);
        } else {
            line(buf, b'*', 2 * n as i64);
        }
    }

    /// A long text (INFO, CLIENT INFO): RESP3's verbatim string, RESP2's bulk.
    pub fn text(&self, buf: &mut BytesMut, text: &str) {
        if self.resp3 {
            line(buf, b'=', text.len() as i64 + 4);
            buf.put_slice(b"txt:");
            buf.put_slice(text.as_bytes());
            buf.put_slice(b"\r\n");
        } else {
            self.bulk(buf, text.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
        let mut b = BytesMut::new();
        f(&mut b);
        b.to_vec()
    }

    #[test]
    fn replies_are_written_as_redis_writes_them() {
        let two = Encoder { resp3: false };
        let three = Encoder { resp3: true };
        assert_eq!(written(|b| two.ok(b)), b"+OK\r\n");
        assert_eq!(written(|b| two.integer(b, -42)), b":-42\r\n");
        assert_eq!(
            written(|b| two.integer(b, i64::MIN)),
            b":-9223372036854775808\r\n"
        );
        assert_eq!(written(|b| two.integer(b, 0)), b":0\r\n");
        assert_eq!(written(|b| two.bulk(b, b"v\r\n")), b"$3\r\nv\r\n\r\n");
        assert_eq!(written(|b| two.null(b)), b"$-1\r\n");
        assert_eq!(written(|b| three.null(b)), b"_\r\n");
        assert_eq!(written(|b| two.map(b, 2)), b"*4\r\n");
        assert_eq!(written(|b| three.map(b, 2)), b"%2\r\n");
        assert_eq!(written(|b| two.error(b, "ERR a\r\nb")), b"-ERR a  b\r\n");
        assert_eq!(written(|b| three.text(b, "x")), b"=5\r\ntxt:x\r\n");
        assert_eq!(written(|b| two.text(b, "x")), b"$1\r\nx\r\n");
    }
}
